//! Plans kept in S3 for backfills that run inside AWS: `plans/<plan id>/plan.jsonl` in the
//! stack's adoption bucket. The adoption function fetches a plan file once per execution
//! environment into its ephemeral storage and reads it from there while S3's copy is unchanged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use tokio::io::AsyncWriteExt;

use crate::adapters::plan_files;
use crate::ports::{KeptPlan, PlanArchive};

/// The largest object one PutObject takes (5 GiB): about 10 million planned records.
const MAX_PLAN_BYTES: u64 = 5 * 1024 * 1024 * 1024;

pub struct S3PlanArchive {
    s3: aws_sdk_s3::Client,
    bucket: String,
    /// Where fetched plans are kept (under `/tmp` in Lambda), per bucket.
    cache: PathBuf,
    /// One fetch at a time in this process (the local stack runs two pollers in one).
    fetching: tokio::sync::Mutex<()>,
}

impl S3PlanArchive {
    pub fn new(aws: &aws_config::SdkConfig, bucket: String, cache: PathBuf) -> Self {
        // A plan file takes minutes to move: no bound on the whole call, only on connecting and
        // on a stall between two reads (the shared configuration bounds calls at seconds).
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .disable_operation_timeout()
            .disable_operation_attempt_timeout()
            .build();
        let mut config = aws_sdk_s3::config::Builder::from(aws).timeout_config(timeouts);
        // A local endpoint (moto) serves buckets by path, not by host name.
        if aws.endpoint_url().is_some() {
            config = config.force_path_style(true);
        }
        Self {
            s3: aws_sdk_s3::Client::from_conf(config.build()),
            cache: cache.join(&bucket),
            bucket,
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn key(plan_id: &str) -> String {
        format!("plans/{plan_id}/plan.jsonl")
    }

    /// Fetches the plan into `dir` unless the copy there is S3's current one (by ETag); `false`
    /// when S3 keeps no such plan (never uploaded, or expired).
    async fn fetch_into(&self, plan_id: &str, dir: &Path) -> anyhow::Result<bool> {
        let _one_at_a_time = self.fetching.lock().await;
        let key = Self::key(plan_id);
        let head = match self.s3.head_object().bucket(&self.bucket).key(&key).send().await {
            Ok(head) => head,
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => return Ok(false),
            Err(error) => {
                return Err(aws_sdk_s3::Error::from(error))
                    .with_context(|| format!("looking for s3://{}/{key}", self.bucket))
            }
        };
        let etag = head.e_tag().unwrap_or_default().to_string();
        let marker = dir.join("etag");
        if std::fs::read_to_string(&marker).is_ok_and(|kept| kept == etag)
            && plan_files::plan_path(dir).is_file()
        {
            return Ok(true);
        }
        // One plan at a time in the ephemeral storage: another plan's copy goes.
        if let Ok(entries) = std::fs::read_dir(&self.cache) {
            for entry in entries.flatten().filter(|entry| entry.path() != dir) {
                std::fs::remove_dir_all(entry.path()).ok();
            }
        }
        std::fs::remove_file(&marker).ok();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let object = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .if_match(&etag)
            .send()
            .await
            .map_err(aws_sdk_s3::Error::from)
            .with_context(|| format!("reading s3://{}/{key}", self.bucket))?;
        // Written aside and renamed: a fetch cut short never passes for the plan.
        let partial = dir.join("plan.jsonl.part");
        let mut file = tokio::fs::File::create(&partial).await?;
        let mut body = object.body;
        while let Some(chunk) = body
            .try_next()
            .await
            .with_context(|| format!("reading s3://{}/{key}", self.bucket))?
        {
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        std::fs::rename(&partial, plan_files::plan_path(dir))?;
        std::fs::write(&marker, etag)?;
        Ok(true)
    }
}

#[async_trait]
impl PlanArchive for S3PlanArchive {
    async fn put(&self, plan_id: &str, dir: &Path) -> anyhow::Result<()> {
        let path = plan_files::plan_path(dir);
        let bytes = std::fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        anyhow::ensure!(
            bytes <= MAX_PLAN_BYTES,
            "{} is {bytes} bytes, over S3's 5 GiB for one upload: split the input and plan each part",
            path.display()
        );
        let key = Self::key(plan_id);
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/x-ndjson")
            .body(ByteStream::from_path(&path).await?)
            .send()
            .await
            .map_err(aws_sdk_s3::Error::from)
            .with_context(|| format!("uploading {} to s3://{}/{key}", path.display(), self.bucket))?;
        Ok(())
    }

    async fn fetch(&self, plan_id: &str) -> anyhow::Result<Option<Box<KeptPlan>>> {
        let dir = self.cache.join(plan_id);
        if !self.fetch_into(plan_id, &dir).await? {
            return Ok(None);
        }
        Ok(Some(Box::new(move || {
            Ok(Box::new(plan_files::read_plan(&dir)?) as Box<dyn Iterator<Item = _> + Send>)
        })))
    }
}
