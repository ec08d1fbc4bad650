//! Who may do what: the reference's token table, made stricter in one place (an update token
//! is valid only for its own project and party).
//!
//! | token   | valid for |
//! |---------|-----------|
//! | result  | describe/delete project; every party's upload status (`/parties`, an extension); list/post/describe/delete runs; run status; results (`groups`, `similarity_scores`, the permutations **mask**) |
//! | update  | its party's upload (`/clks`, `/binaryclks`) and `authorize-external-upload`; its own party's upload status (`/parties`, an extension) |
//! | receipt | `permutations` projects only: describe project, run status, its party's **permutation** |
//!
//! Every comparison goes through [`TokenHash::matches`] (constant time), and every refusal is
//! the same [`ApiError::InvalidAccess`] whether the token is wrong or the project is unknown.

use crate::service::model::{Party, Project, ResultType};

use super::error::ApiError;

/// What a presented token turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Result,
    /// The update token of this party index.
    Update(u32),
    /// The receipt of this party's upload.
    Receipt(u32),
}

/// Which kinds of token an endpoint accepts.
#[derive(Clone, Copy, Debug)]
pub enum Allowed {
    ResultOnly,
    UpdateOnly,
    /// The result token; receipts too when the project's result type is `permutations`.
    ResultOrPermutationsReceipt,
    /// The result token or a party's update token (the caller scopes what an update token sees).
    ResultOrUpdate,
}

/// Identifies `token` among the project's tokens that `allowed` admits.
pub fn authorize(project: &Project, parties: &[Party], token: &str, allowed: Allowed) -> Result<Access, ApiError> {
    let result_ok = || project.result_token_hash.matches(token);
    let update_of = || parties.iter().find(|p| p.update_token_hash.matches(token)).map(|p| p.index);
    let receipt_of = || {
        parties
            .iter()
            .find(|p| p.upload.start().is_some_and(|start| start.receipt_token_hash.matches(token)))
            .map(|p| p.index)
    };
    match allowed {
        Allowed::ResultOnly if result_ok() => Ok(Access::Result),
        Allowed::ResultOrUpdate if result_ok() => Ok(Access::Result),
        Allowed::ResultOrUpdate => update_of().map(Access::Update).ok_or(ApiError::InvalidAccess),
        Allowed::UpdateOnly => update_of().map(Access::Update).ok_or(ApiError::InvalidAccess),
        Allowed::ResultOrPermutationsReceipt => {
            if result_ok() {
                Ok(Access::Result)
            } else if project.result_type == ResultType::Permutations {
                receipt_of().map(Access::Receipt).ok_or(ApiError::InvalidAccess)
            } else {
                Err(ApiError::InvalidAccess)
            }
        }
        _ => Err(ApiError::InvalidAccess),
    }
}
