//! AWS's request limits, defined once and checked where requests are built.
//!
//! DynamoDB, S3 and SQS refuse requests over these limits; the emulators of the local stack
//! mostly do not, and the in-memory adapters would not either. So both the AWS adapters
//! (`aws::*`, before the SDK call) and the in-memory adapters (`service::memory`) check every
//! request against the functions here: a design that only works because an emulator is kinder
//! than AWS fails in the unit tests instead of in production. Callers that build requests out
//! of many pieces (the SQS batches of [`plan_sqs_batches`], the parts of the service's
//! `service::blob_stream::MultipartWriter` and of the `pprl upload` client) size them from the
//! same constants; that is why this module needs no feature: the client builds without the
//! service layer.
//!
//! Each refusal is a [`LimitExceeded`] saying which limit and by how much, so that the caller
//! (or the person reading the run's error) knows what to change.

use std::ops::Range;

/// SendMessageBatch: at most 10 entries.
pub const SQS_MAX_BATCH_ENTRIES: usize = 10;
/// One SQS message body (plus attributes, which the service does not use), and the sum of the
/// bodies of one SendMessageBatch. (SQS has accepted up to 1 MiB since 2025, but the local
/// stack's SQS and queues created with the default `MaximumMessageSize` keep 256 KiB.)
pub const SQS_MAX_MESSAGE_BYTES: usize = 256 * 1024;
pub const SQS_MAX_BATCH_BYTES: usize = 256 * 1024;

/// One DynamoDB item: the UTF-8 lengths of its attribute names plus the sizes of its values.
pub const DYNAMODB_MAX_ITEM_BYTES: usize = 400 * 1024;
/// TransactWriteItems: at most 100 actions (each on a distinct item).
pub const DYNAMODB_MAX_TRANSACT_ITEMS: usize = 100;
/// BatchWriteItem: at most 25 requests.
pub const DYNAMODB_MAX_BATCH_WRITE: usize = 25;

/// PutObject: at most 5 GiB in one request; larger objects need a multipart upload.
pub const S3_MAX_PUT_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// UploadPart: every part but the last at least 5 MiB, every part at most 5 GiB.
pub const S3_MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
pub const S3_MAX_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// Part numbers run from 1 to 10,000.
pub const S3_MAX_PARTS: u32 = 10_000;

/// A request AWS would refuse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("an SQS message of {bytes} bytes exceeds SQS's limit of {SQS_MAX_MESSAGE_BYTES} bytes per message")]
    SqsMessage { bytes: usize },
    #[error("an SQS batch of {entries} messages exceeds SQS's limit of {SQS_MAX_BATCH_ENTRIES} per SendMessageBatch")]
    SqsBatchEntries { entries: usize },
    #[error("an SQS batch of {bytes} bytes exceeds SQS's limit of {SQS_MAX_BATCH_BYTES} bytes per SendMessageBatch")]
    SqsBatchBytes { bytes: usize },
    #[error("the DynamoDB item {item} would take {bytes} bytes; DynamoDB stores at most {DYNAMODB_MAX_ITEM_BYTES} per item")]
    DynamoItem { item: String, bytes: usize },
    #[error("a DynamoDB transaction of {items} items exceeds DynamoDB's limit of {DYNAMODB_MAX_TRANSACT_ITEMS}")]
    DynamoTransaction { items: usize },
    #[error("{key}: a single PUT of {bytes} bytes exceeds S3's limit of {S3_MAX_PUT_BYTES}; write it as a multipart upload")]
    S3Put { key: String, bytes: u64 },
    #[error("{key}: part {number} of {bytes} bytes is outside S3's part sizes ({S3_MIN_PART_BYTES} to {S3_MAX_PART_BYTES} bytes, only the last part may be smaller)")]
    S3PartSize { key: String, number: u32, bytes: u64 },
    #[error("{key}: part number {number} is outside S3's range 1 to {S3_MAX_PARTS}")]
    S3PartNumber { key: String, number: u32 },
}

// ---- SQS --------------------------------------------------------------------------------------

/// Checks one SendMessageBatch request: entry count, each message and the total size.
pub fn check_sqs_batch<S: AsRef<str>>(bodies: &[S]) -> Result<(), LimitExceeded> {
    if bodies.len() > SQS_MAX_BATCH_ENTRIES {
        return Err(LimitExceeded::SqsBatchEntries { entries: bodies.len() });
    }
    let mut total = 0usize;
    for body in bodies {
        let bytes = body.as_ref().len();
        if bytes > SQS_MAX_MESSAGE_BYTES {
            return Err(LimitExceeded::SqsMessage { bytes });
        }
        total += bytes;
    }
    if total > SQS_MAX_BATCH_BYTES {
        return Err(LimitExceeded::SqsBatchBytes { bytes: total });
    }
    Ok(())
}

/// Splits `bodies` (in order) into SendMessageBatch requests capped by count and by bytes, each
/// as full as the limits allow. Refuses a message that no batch can carry.
pub fn plan_sqs_batches<S: AsRef<str>>(bodies: &[S]) -> Result<Vec<Range<usize>>, LimitExceeded> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0usize, 0usize);
    for (i, body) in bodies.iter().enumerate() {
        let size = body.as_ref().len();
        if size > SQS_MAX_MESSAGE_BYTES {
            return Err(LimitExceeded::SqsMessage { bytes: size });
        }
        if i - start == SQS_MAX_BATCH_ENTRIES || bytes + size > SQS_MAX_BATCH_BYTES {
            batches.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < bodies.len() {
        batches.push(start..bodies.len());
    }
    Ok(batches)
}

// ---- DynamoDB ---------------------------------------------------------------------------------

/// The size DynamoDB counts for a number: one byte per two significant digits (leading and
/// trailing zeroes trimmed), one more byte, and one for a negative sign.
pub fn dynamo_number_bytes(number: &str) -> usize {
    let negative = number.starts_with('-');
    let mantissa = number.split(['e', 'E']).next().unwrap_or("");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len().max(1);
    significant.div_ceil(2) + 1 + usize::from(negative)
}

/// Refuses an item of `bytes` (computed as DynamoDB does) over the item limit; `item` names it
/// (its key) in the message.
pub fn check_dynamo_item(item: impl FnOnce() -> String, bytes: usize) -> Result<(), LimitExceeded> {
    if bytes > DYNAMODB_MAX_ITEM_BYTES {
        return Err(LimitExceeded::DynamoItem { item: item(), bytes });
    }
    Ok(())
}

/// Refuses a TransactWriteItems of more than 100 items.
pub fn check_dynamo_transaction(items: usize) -> Result<(), LimitExceeded> {
    if items > DYNAMODB_MAX_TRANSACT_ITEMS {
        return Err(LimitExceeded::DynamoTransaction { items });
    }
    Ok(())
}

// ---- S3 ---------------------------------------------------------------------------------------

/// Refuses a single PutObject over 5 GiB.
pub fn check_s3_put(key: &str, bytes: u64) -> Result<(), LimitExceeded> {
    if bytes > S3_MAX_PUT_BYTES {
        return Err(LimitExceeded::S3Put { key: key.to_string(), bytes });
    }
    Ok(())
}

/// Refuses an UploadPart S3 refuses when it arrives: a part number outside 1..=10,000, or a
/// part over 5 GiB. (A part under 5 MiB is refused only when the upload is completed and it
/// turns out not to be the last: [`check_s3_parts`].)
pub fn check_s3_part(key: &str, number: u32, bytes: u64) -> Result<(), LimitExceeded> {
    if !(1..=S3_MAX_PARTS).contains(&number) {
        return Err(LimitExceeded::S3PartNumber { key: key.to_string(), number });
    }
    if bytes > S3_MAX_PART_BYTES {
        return Err(LimitExceeded::S3PartSize { key: key.to_string(), number, bytes });
    }
    Ok(())
}

/// Checks the parts a CompleteMultipartUpload assembles, `(number, bytes)` in order: each as
/// [`check_s3_part`] does, and every part but the last at least 5 MiB (S3's EntityTooSmall).
pub fn check_s3_parts(key: &str, parts: &[(u32, u64)]) -> Result<(), LimitExceeded> {
    for (i, &(number, bytes)) in parts.iter().enumerate() {
        check_s3_part(key, number, bytes)?;
        if i + 1 < parts.len() && bytes < S3_MIN_PART_BYTES {
            return Err(LimitExceeded::S3PartSize { key: key.to_string(), number, bytes });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqs_batches_are_capped_by_count_and_by_bytes() {
        // Blocked shard messages of up to 64 KiB: ten of them are 640 KiB, too much for one batch.
        let big: Vec<String> = (0..10).map(|_| "x".repeat(60 * 1024)).collect();
        assert_eq!(check_sqs_batch(&big), Err(LimitExceeded::SqsBatchBytes { bytes: 600 * 1024 }));
        let plan = plan_sqs_batches(&big).unwrap();
        assert_eq!(plan, [0..4, 4..8, 8..10]);
        for range in plan {
            check_sqs_batch(&big[range]).unwrap();
        }

        let small: Vec<String> = (0..25).map(|i| i.to_string()).collect();
        assert!(matches!(check_sqs_batch(&small[..11]), Err(LimitExceeded::SqsBatchEntries { entries: 11 })));
        assert_eq!(plan_sqs_batches(&small).unwrap(), [0..10, 10..20, 20..25]);
        assert!(plan_sqs_batches::<String>(&[]).unwrap().is_empty());

        // Exactly at the limits is allowed; one byte more is not.
        let exact = ["y".repeat(SQS_MAX_MESSAGE_BYTES)];
        check_sqs_batch(&exact).unwrap();
        assert_eq!(plan_sqs_batches(&exact).unwrap(), [0..1]);
        let over = ["y".repeat(SQS_MAX_MESSAGE_BYTES + 1)];
        assert_eq!(plan_sqs_batches(&over), Err(LimitExceeded::SqsMessage { bytes: SQS_MAX_MESSAGE_BYTES + 1 }));
        assert_eq!(check_sqs_batch(&over), Err(LimitExceeded::SqsMessage { bytes: SQS_MAX_MESSAGE_BYTES + 1 }));
    }

    #[test]
    fn numbers_are_sized_by_significant_digits() {
        assert_eq!(dynamo_number_bytes("0"), 2);
        assert_eq!(dynamo_number_bytes("7"), 2);
        assert_eq!(dynamo_number_bytes("12"), 2);
        assert_eq!(dynamo_number_bytes("123"), 3);
        assert_eq!(dynamo_number_bytes("1000000"), 2, "trailing zeroes are trimmed");
        assert_eq!(dynamo_number_bytes("0.0012"), 2, "leading zeroes are trimmed");
        assert_eq!(dynamo_number_bytes("-123"), 4);
        assert_eq!(dynamo_number_bytes("18446744073709551615"), 11);
    }

    #[test]
    fn items_transactions_puts_and_parts_are_refused_over_the_limits() {
        check_dynamo_item(|| "x".into(), DYNAMODB_MAX_ITEM_BYTES).unwrap();
        assert!(matches!(check_dynamo_item(|| "x".into(), DYNAMODB_MAX_ITEM_BYTES + 1), Err(LimitExceeded::DynamoItem { .. })));
        check_dynamo_transaction(100).unwrap();
        assert_eq!(check_dynamo_transaction(101), Err(LimitExceeded::DynamoTransaction { items: 101 }));

        check_s3_put("k", S3_MAX_PUT_BYTES).unwrap();
        assert!(matches!(check_s3_put("k", S3_MAX_PUT_BYTES + 1), Err(LimitExceeded::S3Put { .. })));
        check_s3_part("k", 10_000, S3_MAX_PART_BYTES).unwrap();
        assert!(matches!(check_s3_part("k", 0, 1), Err(LimitExceeded::S3PartNumber { number: 0, .. })));
        assert!(matches!(check_s3_part("k", 10_001, 1), Err(LimitExceeded::S3PartNumber { number: 10_001, .. })));
        assert!(matches!(check_s3_part("k", 1, S3_MAX_PART_BYTES + 1), Err(LimitExceeded::S3PartSize { .. })));

        check_s3_parts("k", &[(1, S3_MIN_PART_BYTES), (2, 1)]).unwrap();
        assert!(matches!(check_s3_parts("k", &[(1, S3_MIN_PART_BYTES - 1), (2, 1)]), Err(LimitExceeded::S3PartSize { number: 1, .. })));
    }

    #[cfg(feature = "service")]
    #[test]
    fn the_api_bounds_fit_dynamodb() {
        // create_project writes the project, its parties and the status counter in one transaction.
        check_dynamo_transaction(crate::service::api::projects::MAX_PARTIES as usize + 2).unwrap();
    }
}
