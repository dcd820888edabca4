//! The STOW-RS client behind `lungstream ingest --url URL DIR`: sends DICOM files in
//! batches, reports each file the server rejected with its reason, then commits every
//! series it stored instances of, so the series is analysed without waiting for the
//! quiet period.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use serde_json::Value;

use crate::multipart;

/// Settings of an upload.
#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// Base URL of the ingest service, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Bearer token of the hospital.
    pub token: String,
    /// Largest request body; a batch closes before it would exceed this.
    pub batch_bytes: usize,
    /// Commit the uploaded series at the end.
    pub commit: bool,
    /// Number of retries of a request that got HTTP 503 (store or broker down).
    pub retries: u32,
}

impl UploadOptions {
    pub fn new(url: &str, token: &str) -> UploadOptions {
        UploadOptions {
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            batch_bytes: 32 * 1024 * 1024,
            commit: true,
            retries: 5,
        }
    }
}

/// Result of an upload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UploadSummary {
    pub stored: usize,
    /// Files the server rejected, with the reason (`reason_code: detail`).
    pub rejected: Vec<(PathBuf, String)>,
    /// Series committed: (study UID, series UID).
    pub committed: Vec<(String, String)>,
}

/// Reads the UIDs a file declares, to match them with the server's response and to know
/// which series to commit. Returns `None` for files that cannot be read: they are sent
/// anyway, and the server's response gives the reason they fail.
fn local_uids(path: &PathBuf) -> Option<(String, String, String)> {
    let object = OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(path).ok()?;
    let text = |tag| {
        object
            .element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
    };
    Some((text(tags::STUDY_INSTANCE_UID)?, text(tags::SERIES_INSTANCE_UID)?, text(tags::SOP_INSTANCE_UID)?))
}

/// Uploads `files`; `progress` gets the number of files done after each batch.
///
/// # Errors
///
/// A file cannot be read, the server cannot be reached, the token is rejected, or the
/// server keeps responding with 503.
pub async fn upload(files: &[PathBuf], options: &UploadOptions, mut progress: impl FnMut(usize)) -> anyhow::Result<UploadSummary> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(600)).build()?;
    let mut summary = UploadSummary::default();
    let mut series: BTreeSet<(String, String)> = BTreeSet::new();
    let mut done = 0;
    let mut batch: Vec<(PathBuf, Bytes)> = Vec::new();
    let mut batch_size = 0;
    for (i, path) in files.iter().enumerate() {
        let bytes = Bytes::from(std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?);
        if !batch.is_empty() && batch_size + bytes.len() > options.batch_bytes {
            send_batch(&client, options, std::mem::take(&mut batch), &mut summary, &mut series).await?;
            batch_size = 0;
            progress(done);
        }
        batch_size += bytes.len();
        batch.push((path.clone(), bytes));
        done = i + 1;
    }
    if !batch.is_empty() {
        send_batch(&client, options, batch, &mut summary, &mut series).await?;
        progress(done);
    }
    if options.commit {
        // A series with an instance the service could not store for now (store or broker
        // down) is left open: committing would complete it without that instance.
        let incomplete: BTreeSet<(String, String)> = summary
            .rejected
            .iter()
            .filter(|(_, reason)| reason.starts_with("unavailable:"))
            .filter_map(|(path, _)| local_uids(path).map(|(study, series_uid, _)| (study, series_uid)))
            .collect();
        for (study, series_uid) in series {
            if incomplete.contains(&(study.clone(), series_uid.clone())) {
                tracing::warn!(series = %series_uid, "Not committing a series with instances the service could not store; send them again.");
                continue;
            }
            let url = format!("{}/studies/{study}/series/{series_uid}/commit", options.url);
            let response = client.post(&url).bearer_auth(&options.token).send().await?;
            if !response.status().is_success() {
                anyhow::bail!("commit of a series failed: HTTP {}", response.status());
            }
            summary.committed.push((study, series_uid));
        }
    }
    Ok(summary)
}

async fn send_batch(
    client: &reqwest::Client,
    options: &UploadOptions,
    batch: Vec<(PathBuf, Bytes)>,
    summary: &mut UploadSummary,
    series: &mut BTreeSet<(String, String)>,
) -> anyhow::Result<()> {
    let uids: Vec<Option<(String, String, String)>> = batch.iter().map(|(p, _)| local_uids(p)).collect();
    let boundary = format!("lungstream-{:016x}", rand_u64());
    let parts: Vec<Bytes> = batch.iter().map(|(_, b)| b.clone()).collect();
    let body = multipart::build(&boundary, "application/dicom", &parts);
    let content_type = format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
    let mut attempt = 0;
    let answer = loop {
        let response = client
            .post(format!("{}/studies", options.url))
            .bearer_auth(&options.token)
            .header("Content-Type", &content_type)
            .header("Accept", "application/dicom+json")
            .body(body.clone())
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        match status {
            200 | 202 | 409 => break text,
            401 => anyhow::bail!("the server rejected the token (HTTP 401): check --token or LUNGSTREAM_TOKEN"),
            503 if attempt < options.retries => {
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(2 * u64::from(attempt))).await;
            }
            _ => anyhow::bail!("{}/studies responded with HTTP {status}: {}", options.url, text.trim()),
        }
    };
    let answer: Value = serde_json::from_str(&answer).map_err(|e| anyhow::anyhow!("the server's response is not DICOM JSON: {e}"))?;
    let stored: BTreeSet<String> = sequence(&answer, "00081199").iter().filter_map(|item| first_string(item, "00081155")).collect();
    let mut failures: HashMap<String, String> = HashMap::new();
    let mut failures_by_part: HashMap<usize, String> = HashMap::new();
    for item in sequence(&answer, "00081198") {
        // The whole reason is in this service's private element; other servers give
        // the Error Comment only.
        let comment = first_string(&item, crate::stow::FULL_REASON_TAG)
            .or_else(|| first_string(&item, "00000902"))
            .unwrap_or_else(|| "rejected without an error comment".into());
        match first_string(&item, "00081155") {
            Some(uid) => {
                failures.insert(uid, comment);
            }
            None => {
                if let Some(part) = part_number(&comment) {
                    failures_by_part.insert(part, comment);
                }
            }
        }
    }
    for (index, ((path, _), ids)) in batch.iter().zip(&uids).enumerate() {
        let from_uid = ids.as_ref().and_then(|(_, _, sop)| failures.get(sop).cloned());
        let failure = from_uid.or_else(|| failures_by_part.get(&(index + 1)).cloned());
        match (ids, failure) {
            (_, Some(reason)) => summary.rejected.push((path.clone(), without_part_label(&reason, index + 1))),
            (Some((study, series_uid, sop)), None) if stored.contains(sop) => {
                summary.stored += 1;
                series.insert((study.clone(), series_uid.clone()));
            }
            _ => summary.rejected.push((path.clone(), "the server's answer does not mention this file".into())),
        }
    }
    Ok(())
}

/// Removes the "part N: " label from a reason, since the caller names the file.
fn without_part_label(reason: &str, part: usize) -> String {
    reason.replacen(&format!("part {part}: "), "", 1)
}

/// Reads "part N" from an error comment.
fn part_number(comment: &str) -> Option<usize> {
    let rest = &comment[comment.find("part ")? + 5..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn sequence(answer: &Value, tag: &str) -> Vec<Value> {
    answer[tag]["Value"].as_array().cloned().unwrap_or_default()
}

fn first_string(item: &Value, tag: &str) -> Option<String> {
    item[tag]["Value"][0].as_str().map(str::to_string)
}

/// Returns a random number for the multipart boundary, so it does not occur in DICOM
/// data by chance.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_numbers_read_from_comments() {
        assert_eq!(part_number("invalid_dicom: part 12: not a valid DICOM file"), Some(12));
        assert_eq!(part_number("not_ct: no number"), None);
        assert_eq!(without_part_label("truncated: part 3: ends early", 3), "truncated: ends early");
    }
}
