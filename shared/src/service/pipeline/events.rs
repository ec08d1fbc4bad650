//! Decoding what the queues deliver: S3 event notifications (possibly a test event) and our own
//! messages.

use super::PipelineError;

/// The object keys an S3 event notification (as delivered in an SQS message body) names.
/// S3's `s3:TestEvent` yields no keys.
pub fn s3_event_keys(body: &str) -> Result<Vec<String>, PipelineError> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| PipelineError::Event(format!("not JSON: {e}")))?;
    if v.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    let records = v
        .get("Records")
        .and_then(|r| r.as_array())
        .ok_or_else(|| PipelineError::Event("no Records in S3 event".into()))?;
    let mut keys = Vec::with_capacity(records.len());
    for r in records {
        let name = r.get("eventName").and_then(|n| n.as_str()).unwrap_or_default();
        if !name.starts_with("ObjectCreated") {
            continue;
        }
        let key = r
            .pointer("/s3/object/key")
            .and_then(|k| k.as_str())
            .ok_or_else(|| PipelineError::Event("S3 record without object key".into()))?;
        keys.push(decode_s3_key(key));
    }
    Ok(keys)
}

/// S3 notifications URL-encode keys (`+` for space, `%XX` for other bytes).
pub fn decode_s3_key(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_url_decoded() {
        assert_eq!(decode_s3_key("incoming/runs/a%2Fb+c"), "incoming/runs/a/b c");
        assert_eq!(decode_s3_key("plain/key"), "plain/key");
        assert_eq!(decode_s3_key("bad%zz%"), "bad%zz%");
        assert_eq!(decode_s3_key("end%4"), "end%4");
    }

    #[test]
    fn test_events_yield_nothing_and_records_yield_keys() {
        assert!(s3_event_keys(r#"{"Event":"s3:TestEvent","Bucket":"b"}"#).unwrap().is_empty());
        let body = r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"incoming/runs/p/r"}}},
                                  {"eventName":"ObjectRemoved:Delete","s3":{"object":{"key":"x"}}}]}"#;
        assert_eq!(s3_event_keys(body).unwrap(), vec!["incoming/runs/p/r".to_string()]);
        assert!(s3_event_keys("nope").is_err());
    }
}
