//! Object keys in the working bucket. One module, so the api, fan-out, compare, solve and the
//! cleanup agree on the layout:
//!
//! ```text
//! incoming/uploads/{project}/{party}/{upload}   an upload as received (its S3 event starts ingestion)
//! incoming/runs/{project}/{run}                 a run request (its S3 event starts the run)
//! incoming/deletes/{project}                    a project delete (its S3 event purges everything)
//! incoming/ingest/{project}/{party}/{upload}/{step}  one step of a partitioned ingestion (pipeline::blocked_ingestion)
//! data/{project}/{party}/data.bin               packed entries (engine::packed)
//! data/{project}/{party}/index.bin              block index of data.bin
//! data/{project}/{party}/ingest-{upload}/...    a partitioned ingestion's plan, chunk files and partitions
//! work/{project}/{run}/shards/{n}.json          shard descriptions
//! work/{project}/{run}/candidates/{n}.bin       candidate pairs of shard n
//! work/{project}/{run}/merged/{level}/{n}.bin   solve's merge tree: group n of level `level`
//! results/{project}/{run}/...                   published results
//! watchdog/cursor                               where the watchdog's last sweep stopped
//! ```

pub const INCOMING_UPLOADS: &str = "incoming/uploads/";
pub const INCOMING_RUNS: &str = "incoming/runs/";
pub const INCOMING_DELETES: &str = "incoming/deletes/";
pub const INCOMING_INGEST: &str = "incoming/ingest/";
/// The project listing position where the watchdog's last sweep stopped (`pipeline::watchdog`).
pub const WATCHDOG_CURSOR: &str = "watchdog/cursor";

pub fn upload(project: &str, party: u32, upload: &str) -> String {
    format!("{INCOMING_UPLOADS}{project}/{party}/{upload}")
}
pub fn run_request(project: &str, run: &str) -> String {
    format!("{INCOMING_RUNS}{project}/{run}")
}
pub fn delete_request(project: &str) -> String {
    format!("{INCOMING_DELETES}{project}")
}
pub fn party_data(project: &str, party: u32) -> String {
    format!("data/{project}/{party}/data.bin")
}
/// Where a streamed ingestion that ran out of time notes how far it got (see
/// `pipeline::external`); deleted when the ingestion ends.
pub fn ingest_checkpoint(project: &str, party: u32, upload: &str) -> String {
    format!("data/{project}/{party}/ingest-{upload}.json")
}
/// Where a partitioned ingestion keeps its work (`pipeline::blocked_ingestion`); removed when
/// the ingestion ends either way.
pub fn ingest_work_prefix(project: &str, party: u32, upload: &str) -> String {
    format!("data/{project}/{party}/ingest-{upload}/")
}
/// The request for one step of a partitioned ingestion (its S3 event runs the step).
pub fn ingest_step(project: &str, party: u32, upload: &str, step: IngestStep) -> String {
    format!("{}{}", ingest_steps_prefix(project, party, upload), step.name())
}
/// Every step request of one partitioned ingestion.
pub fn ingest_steps_prefix(project: &str, party: u32, upload: &str) -> String {
    format!("{INCOMING_INGEST}{project}/{party}/{upload}/")
}
/// Every party's packed data of a project.
pub fn project_data_prefix(project: &str) -> String {
    format!("data/{project}/")
}
pub fn party_index(project: &str, party: u32) -> String {
    format!("data/{project}/{party}/index.bin")
}
pub fn run_work_prefix(project: &str, run: &str) -> String {
    format!("work/{project}/{run}/")
}
pub fn shard(project: &str, run: &str, shard: u32) -> String {
    format!("work/{project}/{run}/shards/{shard}.json")
}
/// Page `page` of a run's shard messages, stored for dispatch (`pipeline::dispatch`).
pub fn plan_page(project: &str, run: &str, page: u32) -> String {
    format!("work/{project}/{run}/plan/{page}.json")
}
pub fn shard_candidates(project: &str, run: &str, shard: u32) -> String {
    format!("{}{shard}.bin", shard_candidates_prefix(project, run))
}
/// Where compare writes the candidates of a run's shards (one file per shard with candidates).
pub fn shard_candidates_prefix(project: &str, run: &str) -> String {
    format!("work/{project}/{run}/candidates/")
}
/// Where solve's merge tree keeps the merged candidates of one level (see `pipeline::merge`).
pub fn merged_candidates_prefix(project: &str, run: &str, level: u32) -> String {
    format!("work/{project}/{run}/merged/{level}/")
}
pub fn merged_candidates(project: &str, run: &str, level: u32, group: u32) -> String {
    format!("work/{project}/{run}/merged/{level}/{group}.bin")
}
pub fn run_results_prefix(project: &str, run: &str) -> String {
    format!("results/{project}/{run}/")
}
/// anonlink's binary candidate-pair file: the object behind `RETURN-OBJECT-STORE-ADDRESS`.
pub fn result_candidates(project: &str, run: &str) -> String {
    format!("results/{project}/{run}/similarity_scores.bin")
}
pub fn result_similarity_scores(project: &str, run: &str) -> String {
    format!("results/{project}/{run}/similarity_scores.json")
}
pub fn result_groups(project: &str, run: &str) -> String {
    format!("results/{project}/{run}/groups.json")
}
pub fn result_permutation(project: &str, run: &str, party: u32) -> String {
    format!("results/{project}/{run}/permutation-{party}.json")
}
pub fn result_mask(project: &str, run: &str) -> String {
    format!("results/{project}/{run}/mask.json")
}
/// Every prefix that can hold objects of a project (for deletion).
pub fn project_prefixes(project: &str) -> [String; 7] {
    [
        format!("{INCOMING_UPLOADS}{project}/"),
        format!("{INCOMING_INGEST}{project}/"),
        format!("{INCOMING_RUNS}{project}/"),
        project_data_prefix(project),
        format!("work/{project}/"),
        format!("results/{project}/"),
        delete_request(project),
    ]
}

/// A parsed key under `incoming/`: what an S3 event asks fan-out to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Upload { project: String, party: u32, upload: String },
    Run { project: String, run: String },
    Delete { project: String },
    IngestStep { project: String, party: u32, upload: String, step: IngestStep },
}

/// One step of a partitioned ingestion (`pipeline::blocked_ingestion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestStep {
    /// Partition the records of chunk n of the blocks file.
    Chunk(u32),
    /// Merge partition n's chunk files.
    Merge(u32),
    /// Concatenate the partitions into the party's `data.bin` and `index.bin`.
    Assemble,
}

impl IngestStep {
    pub fn name(self) -> String {
        match self {
            IngestStep::Chunk(n) => format!("chunk-{n}"),
            IngestStep::Merge(n) => format!("merge-{n}"),
            IngestStep::Assemble => "assemble".into(),
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        if name == "assemble" {
            return Some(IngestStep::Assemble);
        }
        let number = |rest: &str| rest.parse::<u32>().ok().filter(|_| rest.bytes().all(|b| b.is_ascii_digit()));
        if let Some(rest) = name.strip_prefix("chunk-") {
            return number(rest).map(IngestStep::Chunk);
        }
        number(name.strip_prefix("merge-")?).map(IngestStep::Merge)
    }
}

impl Incoming {
    pub fn parse(key: &str) -> Option<Self> {
        if let Some(rest) = key.strip_prefix(INCOMING_UPLOADS) {
            let mut it = rest.split('/');
            let (project, party, upload) = (it.next()?, it.next()?, it.next()?);
            if it.next().is_some() || project.is_empty() || upload.is_empty() {
                return None;
            }
            return Some(Incoming::Upload { project: project.into(), party: party.parse().ok()?, upload: upload.into() });
        }
        if let Some(rest) = key.strip_prefix(INCOMING_RUNS) {
            let (project, run) = rest.split_once('/')?;
            if project.is_empty() || run.is_empty() || run.contains('/') {
                return None;
            }
            return Some(Incoming::Run { project: project.into(), run: run.into() });
        }
        if let Some(rest) = key.strip_prefix(INCOMING_INGEST) {
            let mut it = rest.split('/');
            let (project, party, upload, step) = (it.next()?, it.next()?, it.next()?, it.next()?);
            if it.next().is_some() || project.is_empty() || upload.is_empty() {
                return None;
            }
            let (party, step) = (party.parse().ok()?, IngestStep::parse(step)?);
            return Some(Incoming::IngestStep { project: project.into(), party, upload: upload.into(), step });
        }
        if let Some(project) = key.strip_prefix(INCOMING_DELETES) {
            if project.is_empty() || project.contains('/') {
                return None;
            }
            return Some(Incoming::Delete { project: project.into() });
        }
        None
    }
}
