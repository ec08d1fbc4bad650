//! Dispatch: sending a run's shard messages to compare at a cost per invocation that does not
//! grow with the shard count.
//!
//! fan-out plans the run and groups its shard messages into pages (at most
//! [`PAGE_SHARDS`](crate::engine::sizing::PAGE_SHARDS) messages or
//! [`PAGE_BYTES`](crate::engine::sizing::PAGE_BYTES) each, stored under `plan/` in the run's
//! work prefix). Then it dispatches the range of all pages: a range of one page sends that
//! page's shard messages; a longer range is split into at most
//! [`DISPATCH_FANOUT`](crate::engine::sizing::DISPATCH_FANOUT) sub-ranges, each sent as a
//! [`DispatchMessage`] on the shard queue, where compare dispatches it the same way (a fan-out of
//! fan-outs). No invocation sends more than one page of shard messages or one batch of range
//! messages, whatever the run's size; 50,000 shards are 50 pages, two levels deep.
//!
//! Redelivery: a range message delivered again re-sends its own range only (pages and shard
//! messages are deterministic, and a shard counted before is not counted again, so duplicates
//! cost a little compute at most). A run of one page (every small run) sends its shards straight
//! from fan-out, without storing the page.
//!
//! Recursion: compare sends messages to its own queue, and fan-out announces a paused ingestion
//! to itself through S3 and its queue. Lambda's recursive loop detection stops such chains after
//! ~16 hops, so both functions set `RecursiveLoop: Allow` in the template; the dispatch tree
//! itself is shallow (log10 of the page count) and ends at the leaves.

use std::ops::Range;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::engine::sizing::{PAGE_BYTES, PAGE_SHARDS, split_pages};
use crate::service::keys;
use crate::service::ports::{BlobReader, BlobStore, Ports, RunStore, WorkQueue};

use super::{Pipeline, PipelineError};

/// A message on the shard queue: dispatch pages `pages` of a run's stored shard messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DispatchMessage {
    pub project_id: String,
    pub run_id: String,
    pub pages: Range<u32>,
}

/// Groups message bodies into pages (in order) of at most `PAGE_SHARDS` bodies and `PAGE_BYTES`.
pub fn paginate(bodies: Vec<String>) -> Vec<Vec<String>> {
    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut bytes = 0usize;
    for body in bodies {
        let full = pages.last().is_none_or(|p| p.len() >= PAGE_SHARDS || (!p.is_empty() && bytes + body.len() > PAGE_BYTES));
        if full {
            pages.push(Vec::new());
            bytes = 0;
        }
        bytes += body.len();
        if let Some(page) = pages.last_mut() {
            page.push(body);
        }
    }
    pages
}

impl<P: Ports> Pipeline<P>
where
    P::Meta: RunStore,
    P::Work: BlobStore,
    P::Queue: WorkQueue,
{
    /// fan-out's part: stores the pages (when there is more than one) and dispatches them all.
    pub(super) async fn dispatch_run(&self, project_id: &str, run_id: &str, bodies: Vec<String>) -> Result<(), PipelineError> {
        let pages = paginate(bodies);
        if pages.len() == 1 {
            return Ok(self.queue.send(&self.settings.shard_queue_url, pages.into_iter().flatten().collect()).await?);
        }
        for (number, page) in pages.iter().enumerate() {
            let body = serde_json::to_vec(page).map_err(|e| PipelineError::Corrupt(e.to_string()))?;
            self.work.put(&keys::plan_page(project_id, run_id, number as u32), Bytes::from(body), &Vec::new()).await?;
        }
        info!(project_id, run_id, pages = pages.len(), "shard messages stored in pages");
        self.dispatch_pages(project_id, run_id, 0..pages.len() as u32).await
    }

    /// compare's part: one range message.
    pub async fn dispatch(&self, message: &DispatchMessage) -> Result<(), PipelineError> {
        let (project_id, run_id) = (message.project_id.as_str(), message.run_id.as_str());
        match self.meta.get_run(project_id, run_id).await? {
            Some(run) if !run.state.is_final() => self.dispatch_pages(project_id, run_id, message.pages.clone()).await,
            _ => Ok(()), // deleted or finished: nothing left to send
        }
    }

    async fn dispatch_pages(&self, project_id: &str, run_id: &str, pages: Range<u32>) -> Result<(), PipelineError> {
        if pages.end <= pages.start {
            return Ok(());
        }
        if pages.end - pages.start == 1 {
            let (body, _) = self.work.get(&keys::plan_page(project_id, run_id, pages.start)).await?;
            let bodies: Vec<String> = serde_json::from_slice(&body)
                .map_err(|e| PipelineError::Corrupt(format!("plan page {}: {e}", pages.start)))?;
            return Ok(self.queue.send(&self.settings.shard_queue_url, bodies).await?);
        }
        let ranges = split_pages(pages)
            .into_iter()
            .map(|pages| serde_json::to_string(&DispatchMessage { project_id: project_id.into(), run_id: run_id.into(), pages }))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PipelineError::Corrupt(e.to_string()))?;
        Ok(self.queue.send(&self.settings.shard_queue_url, ranges).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_hold_every_body_once_in_order_within_limits() {
        let bodies: Vec<String> = (0..2_345).map(|i| format!("{i:0width$}", width = 1 + (i % 7) * 1000)).collect();
        let pages = paginate(bodies.clone());
        assert!(pages.iter().all(|p| !p.is_empty() && p.len() <= PAGE_SHARDS));
        assert!(pages.iter().all(|p| p.len() == 1 || p.iter().map(String::len).sum::<usize>() <= PAGE_BYTES));
        assert_eq!(pages.concat(), bodies);
        let big = vec!["x".repeat(PAGE_BYTES), "y".into(), "z".repeat(PAGE_BYTES)];
        assert_eq!(paginate(big).len(), 3, "a body larger than a page still travels, alone");
        assert!(paginate(Vec::new()).is_empty());
    }
}
