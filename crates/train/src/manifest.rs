//! Training manifests: which series to train or evaluate on, with their scan labels, and
//! the patient-level split into training, validation and test parts.
//!
//! A manifest is a CSV file (RFC 4180: comma-separated, fields may be double-quoted, a
//! doubled quote inside a quoted field is one quote) whose header names the columns
//! `series`, `label`, `centre`, `patient_id` and, optionally, `infected_percent`:
//!
//! ```text
//! series,label,centre,patient_id,infected_percent
//! riverside/covid-0001,covid,riverside,riverside-0001,4.25
//! /data/scans/2020-11-03,healthy,"St. Anne's, ward 3",A-17,
//! ```
//!
//! * `series`: the folder of one DICOM series. A relative path is resolved against the
//!   folder that contains the manifest.
//! * `label`: `healthy`, `covid` or `other` (any case; see [`ScanLabel`]).
//! * `centre`: the hospital or scanner site, used to hold out whole centres.
//! * `patient_id`: any non-empty text. Every scan of one patient carries the same id,
//!   because the split keeps a patient's scans together.
//! * `infected_percent`: the true share of infected lung (0 to 100), where known, e.g.
//!   from a phantom's ground truth. An empty field means unknown.
//!
//! The columns may come in any order. Unquoted fields are trimmed of spaces and tabs,
//! blank lines are skipped, and a UTF-8 byte order mark is ignored.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ScanLabel;

/// Column names of a manifest, in the order [`Manifest::write`] writes them.
pub const COLUMNS: [&str; 5] = [
    "series",
    "label",
    "centre",
    "patient_id",
    "infected_percent",
];

/// Share of each label's patients that go to the training part.
pub const TRAIN_SHARE: f64 = 0.81;
/// Share of each label's patients that go to the validation part; the test part gets
/// the rest (10%).
pub const VALIDATION_SHARE: f64 = 0.09;

/// One scan of a manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestEntry {
    /// Folder of the DICOM series, resolved against the manifest's folder.
    pub series: PathBuf,
    pub label: ScanLabel,
    pub centre: String,
    pub patient_id: String,
    /// True share of infected lung in percent, where known.
    pub infected_percent: Option<f64>,
}

/// The scans of a manifest, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

/// Failure to read or write a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    // The I/O error is part of the message, not a source, so that error chains (such as
    // anyhow's `{:#}`) do not print it twice.
    #[error("failed to read manifest {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },

    #[error("failed to write manifest {}: {error}", path.display())]
    Write { path: PathBuf, error: std::io::Error },

    /// A line of the file breaks the format. `line` counts from 1, and a record with a
    /// quoted line break is reported at the line where it starts.
    #[error("invalid manifest {}, line {line}: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        problem: ManifestProblem,
    },

    /// Manifests are UTF-8 text, so a series path must be valid UTF-8 to be written.
    #[error("cannot write series path {} to a manifest: it is not valid UTF-8", path.display())]
    NonUtf8Path { path: PathBuf },
}

/// The problem found on one line of a manifest.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ManifestProblem {
    #[error(
        "the file is empty; expected the header series,label,centre,patient_id[,infected_percent]"
    )]
    MissingHeader,
    #[error("missing column {0:?}; the header needs series, label, centre and patient_id")]
    MissingColumn(&'static str),
    #[error("unknown column {0:?}; expected series, label, centre, patient_id and optionally infected_percent")]
    UnknownColumn(String),
    #[error("column {0:?} appears twice in the header")]
    DuplicateColumn(String),
    #[error("expected {expected} fields as in the header, found {found}")]
    FieldCount { expected: usize, found: usize },
    #[error("a quoted field is not closed before the end of the file")]
    UnterminatedQuote,
    #[error("a double quote inside an unquoted field; quote the whole field and double the quote")]
    QuoteInUnquotedField,
    #[error("text after the closing quote of a field; expected a comma or the end of the line")]
    TextAfterQuote,
    #[error("empty {0}")]
    EmptyField(&'static str),
    /// The message of [`ScanLabel`]'s `FromStr`, which names the label and the valid ones.
    #[error("{0}")]
    UnknownLabel(String),
    #[error(
        "invalid {column} {value:?}: expected a number from 0 to 100, or an empty field if unknown"
    )]
    BadNumber { column: &'static str, value: String },
    #[error("series {} is already listed on line {first_line}", series.display())]
    DuplicateSeries { series: PathBuf, first_line: usize },
}

/// A problem together with the line it was found on.
type LineProblem = (usize, ManifestProblem);

impl Manifest {
    /// Reads and validates a manifest file, resolving relative series paths against the
    /// folder that contains it.
    ///
    /// # Errors
    ///
    /// [`ManifestError::Read`] when the file cannot be read as UTF-8 text.
    /// [`ManifestError::Invalid`] with the line number of the first invalid line, for a
    /// missing, unknown or repeated column, a wrong number of fields or a broken quote.
    /// The same error reports an empty series, centre or patient id, an unknown label,
    /// an infected percentage that is not a number from 0 to 100, and a series listed
    /// twice.
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|error| ManifestError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        Manifest::parse(&text, base).map_err(|(line, problem)| ManifestError::Invalid {
            path: path.to_path_buf(),
            line,
            problem,
        })
    }

    /// Writes the manifest with all five columns, replacing `path` only once the whole
    /// file is written (through a temporary file beside it). Series below the manifest's
    /// folder are written relative to it, so the folder can be moved as a whole. Other
    /// series are written as absolute paths.
    ///
    /// # Errors
    ///
    /// [`ManifestError::NonUtf8Path`] for a series path that is not UTF-8, and
    /// [`ManifestError::Write`] when the file cannot be written.
    pub fn write(&self, path: &Path) -> Result<(), ManifestError> {
        let write_error = |error| ManifestError::Write {
            path: path.to_path_buf(),
            error,
        };
        let base = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let base = std::path::absolute(base).map_err(write_error)?;

        let mut text = COLUMNS.join(",");
        text.push('\n');
        for entry in &self.entries {
            let series = std::path::absolute(&entry.series).map_err(write_error)?;
            let series = series.strip_prefix(&base).unwrap_or(&series);
            let series = series.to_str().ok_or_else(|| ManifestError::NonUtf8Path {
                path: entry.series.clone(),
            })?;
            let infected = entry
                .infected_percent
                .map(|p| p.to_string())
                .unwrap_or_default();
            let fields = [
                series,
                entry.label.name(),
                &entry.centre,
                &entry.patient_id,
                &infected,
            ];
            let line: Vec<String> = fields.iter().map(|field| quote_field(field)).collect();
            writeln!(text, "{}", line.join(",")).expect("writing to a String cannot fail");
        }

        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        std::fs::write(&temporary, text).map_err(write_error)?;
        std::fs::rename(&temporary, path).map_err(write_error)
    }

    /// Parses manifest text; relative series paths are joined to `base`.
    fn parse(text: &str, base: &Path) -> Result<Manifest, LineProblem> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut records = parse_csv(text)?.into_iter();
        let (header_line, header) = records.next().ok_or((1, ManifestProblem::MissingHeader))?;
        let columns = Columns::from_header(&header).map_err(|problem| (header_line, problem))?;

        let mut entries = Vec::new();
        let mut first_lines: HashMap<PathBuf, usize> = HashMap::new();
        for (line, fields) in records {
            let entry = columns
                .entry(&fields, base)
                .map_err(|problem| (line, problem))?;
            if let Some(&first_line) = first_lines.get(&entry.series) {
                let series = entry.series;
                return Err((
                    line,
                    ManifestProblem::DuplicateSeries { series, first_line },
                ));
            }
            first_lines.insert(entry.series.clone(), line);
            entries.push(entry);
        }
        Ok(Manifest { entries })
    }
}

/// Positions of the columns in a manifest's records.
struct Columns {
    count: usize,
    series: usize,
    label: usize,
    centre: usize,
    patient_id: usize,
    infected_percent: Option<usize>,
}

impl Columns {
    fn from_header(header: &[String]) -> Result<Columns, ManifestProblem> {
        let mut positions: HashMap<&'static str, usize> = HashMap::new();
        for (position, name) in header.iter().enumerate() {
            let normalised = name.trim().to_ascii_lowercase();
            let Some(&column) = COLUMNS.iter().find(|&&column| column == normalised) else {
                return Err(ManifestProblem::UnknownColumn(name.clone()));
            };
            if positions.insert(column, position).is_some() {
                return Err(ManifestProblem::DuplicateColumn(column.to_string()));
            }
        }
        let required = |column: &'static str| {
            positions
                .get(column)
                .copied()
                .ok_or(ManifestProblem::MissingColumn(column))
        };
        Ok(Columns {
            count: header.len(),
            series: required("series")?,
            label: required("label")?,
            centre: required("centre")?,
            patient_id: required("patient_id")?,
            infected_percent: positions.get("infected_percent").copied(),
        })
    }

    fn entry(&self, fields: &[String], base: &Path) -> Result<ManifestEntry, ManifestProblem> {
        if fields.len() != self.count {
            return Err(ManifestProblem::FieldCount {
                expected: self.count,
                found: fields.len(),
            });
        }
        let non_empty = |position: usize, column: &'static str| {
            let value = &fields[position];
            if value.is_empty() {
                Err(ManifestProblem::EmptyField(column))
            } else {
                Ok(value.clone())
            }
        };

        let series = base.join(non_empty(self.series, "series")?);
        let label = fields[self.label]
            .parse()
            .map_err(ManifestProblem::UnknownLabel)?;
        let centre = non_empty(self.centre, "centre")?;
        let patient_id = non_empty(self.patient_id, "patient_id")?;
        let infected_percent = match self.infected_percent.map(|position| &fields[position]) {
            None => None,
            Some(value) if value.is_empty() => None,
            Some(value) => Some(parse_percent(value)?),
        };
        Ok(ManifestEntry {
            series,
            label,
            centre,
            patient_id,
            infected_percent,
        })
    }
}

fn parse_percent(value: &str) -> Result<f64, ManifestProblem> {
    let bad_number = || ManifestProblem::BadNumber {
        column: "infected_percent",
        value: value.to_string(),
    };
    let percent: f64 = value.parse().map_err(|_| bad_number())?;
    if !(0.0..=100.0).contains(&percent) {
        return Err(bad_number());
    }
    Ok(percent)
}

/// The separator that ends a field.
enum FieldEnd {
    Comma,
    LineEnd,
    EndOfText,
}

/// Splits CSV text into records, each with the line (from 1) where it starts. Blank lines
/// yield no record.
fn parse_csv(text: &str) -> Result<Vec<(usize, Vec<String>)>, LineProblem> {
    let mut chars = text.chars().peekable();
    let mut line = 1;
    let mut records = Vec::new();
    while chars.peek().is_some() {
        let start_line = line;
        let mut fields = Vec::new();
        loop {
            let (field, end) = parse_field(&mut chars, &mut line)?;
            fields.push(field);
            if !matches!(end, FieldEnd::Comma) {
                break;
            }
        }
        let blank = fields.len() == 1 && fields[0].is_empty();
        if !blank {
            records.push((start_line, fields));
        }
    }
    Ok(records)
}

/// Reads one field and the separator after it, counting line breaks in `line`.
fn parse_field(
    chars: &mut std::iter::Peekable<std::str::Chars>,
    line: &mut usize,
) -> Result<(String, FieldEnd), LineProblem> {
    while chars.next_if(|&c| c == ' ' || c == '\t').is_some() {}
    let mut field = String::new();

    if chars.next_if_eq(&'"').is_none() {
        loop {
            match chars.next() {
                None => return Ok((field.trim_end().to_string(), FieldEnd::EndOfText)),
                Some(',') => return Ok((field.trim_end().to_string(), FieldEnd::Comma)),
                Some(c @ ('\n' | '\r')) => {
                    end_line(c, chars, line);
                    return Ok((field.trim_end().to_string(), FieldEnd::LineEnd));
                }
                Some('"') => return Err((*line, ManifestProblem::QuoteInUnquotedField)),
                Some(c) => field.push(c),
            }
        }
    }

    let start_line = *line;
    loop {
        match chars.next() {
            None => return Err((start_line, ManifestProblem::UnterminatedQuote)),
            Some('"') if chars.next_if_eq(&'"').is_some() => field.push('"'),
            Some('"') => break,
            Some(c) => {
                if c == '\n' {
                    *line += 1;
                }
                field.push(c);
            }
        }
    }
    while chars.next_if(|&c| c == ' ' || c == '\t').is_some() {}
    match chars.next() {
        None => Ok((field, FieldEnd::EndOfText)),
        Some(',') => Ok((field, FieldEnd::Comma)),
        Some(c @ ('\n' | '\r')) => {
            end_line(c, chars, line);
            Ok((field, FieldEnd::LineEnd))
        }
        Some(_) => Err((*line, ManifestProblem::TextAfterQuote)),
    }
}

/// Consumes the `\n` of a `\r\n` line end and counts the line.
fn end_line(c: char, chars: &mut std::iter::Peekable<std::str::Chars>, line: &mut usize) {
    if c == '\r' {
        chars.next_if_eq(&'\n');
    }
    *line += 1;
}

/// Quotes a field when it contains a comma, a quote, a line break or surrounding blanks,
/// which an unquoted field would lose or misplace.
fn quote_field(field: &str) -> String {
    let needs_quotes = field.contains([',', '"', '\n', '\r'])
        || field.starts_with([' ', '\t'])
        || field.ends_with([' ', '\t']);
    if needs_quotes {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// The part of a data set a scan belongs to.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Validation,
    Test,
    /// A scan from a centre that is kept out of training and model selection entirely.
    HeldOutCentre,
}

impl Split {
    /// Returns the name used in outputs: `train`, `validation`, `test` or `held_out_centre`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
            Split::HeldOutCentre => "held_out_centre",
        }
    }
}

/// Assigns every entry to a part of the data set; the result is parallel to `entries`.
///
/// Entries whose centre is in `holdout_centres` (exact match) are
/// [`Split::HeldOutCentre`]. The other entries are split by patient, so all scans with
/// one `patient_id` land in the same part. The split is stratified by label, where a
/// patient's label is that of its first scan in `entries`. The patients of each label
/// are ordered by SHA-256 of `seed` (8 bytes, little-endian) followed by the patient id.
/// The first 81% go to training, the next 9% to validation and the rest to testing,
/// with each boundary rounded to the nearest patient. The same entries and seed always give the
/// same split, whatever the entries' order.
///
/// NOTE: a label with few patients may leave a part without that label (with 5 patients,
/// the split is 4, 1 and 0).
pub fn split(entries: &[ManifestEntry], holdout_centres: &[String], seed: u64) -> Vec<Split> {
    let held_out = |entry: &ManifestEntry| holdout_centres.contains(&entry.centre);

    let mut patient_labels: HashMap<&str, ScanLabel> = HashMap::new();
    for entry in entries.iter().filter(|entry| !held_out(entry)) {
        patient_labels
            .entry(&entry.patient_id)
            .or_insert(entry.label);
    }
    let mut patients_by_label: BTreeMap<ScanLabel, Vec<([u8; 32], &str)>> = BTreeMap::new();
    for (&patient_id, &label) in &patient_labels {
        let key = patient_order_key(seed, patient_id);
        patients_by_label
            .entry(label)
            .or_default()
            .push((key, patient_id));
    }

    let mut patient_parts: HashMap<&str, Split> = HashMap::new();
    for patients in patients_by_label.values_mut() {
        patients.sort_unstable();
        let count = patients.len() as f64;
        let train_end = (count * TRAIN_SHARE).round() as usize;
        let validation_end = (count * (TRAIN_SHARE + VALIDATION_SHARE)).round() as usize;
        for (position, &(_, patient_id)) in patients.iter().enumerate() {
            let part = if position < train_end {
                Split::Train
            } else if position < validation_end {
                Split::Validation
            } else {
                Split::Test
            };
            patient_parts.insert(patient_id, part);
        }
    }

    entries
        .iter()
        .map(|entry| {
            if held_out(entry) {
                Split::HeldOutCentre
            } else {
                patient_parts[entry.patient_id.as_str()]
            }
        })
        .collect()
}

fn patient_order_key(seed: u64, patient_id: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(patient_id.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "series,label,centre,patient_id,infected_percent\n";

    fn parse(text: &str) -> Result<Manifest, LineProblem> {
        Manifest::parse(text, Path::new("/data"))
    }

    fn entry(series: &str, label: ScanLabel, centre: &str, patient_id: &str) -> ManifestEntry {
        ManifestEntry {
            series: PathBuf::from(series),
            label,
            centre: centre.to_string(),
            patient_id: patient_id.to_string(),
            infected_percent: None,
        }
    }

    #[test]
    fn parse_plain_and_quoted_fields() {
        let text = concat!(
            "series,label,centre,patient_id,infected_percent\r\n",
            "a/covid-1,COVID,riverside,P1,4.5\r\n",
            "\n",
            "\"b/with, comma\",healthy,\"St. Anne's, \"\"north\"\" wing\",\"P 2\",\n",
            "  c/three , other , lakeside , P3 , 0 \n",
        );
        let manifest = parse(text).unwrap();
        assert_eq!(manifest.entries.len(), 3);

        let first = &manifest.entries[0];
        assert_eq!(first.series, Path::new("/data/a/covid-1"));
        assert_eq!(first.label, ScanLabel::Covid);
        assert_eq!(first.centre, "riverside");
        assert_eq!(first.patient_id, "P1");
        assert_eq!(first.infected_percent, Some(4.5));

        let second = &manifest.entries[1];
        assert_eq!(second.series, Path::new("/data/b/with, comma"));
        assert_eq!(second.centre, "St. Anne's, \"north\" wing");
        assert_eq!(second.patient_id, "P 2");
        assert_eq!(second.infected_percent, None);

        let third = &manifest.entries[2];
        assert_eq!(third.series, Path::new("/data/c/three"));
        assert_eq!(third.label, ScanLabel::Other);
        assert_eq!(third.centre, "lakeside");
        assert_eq!(third.infected_percent, Some(0.0));
    }

    #[test]
    fn parse_quoted_line_break() {
        let text = "series,label,centre,patient_id\n\"a\nb\",covid,x,P1\nc,covid,x,\n";
        // The second record starts on line 2 and ends on line 3, so the empty patient id
        // of the next record is reported on line 4.
        assert_eq!(
            parse(text),
            Err((4, ManifestProblem::EmptyField("patient_id")))
        );
        let manifest = parse("series,label,centre,patient_id\n\"a\nb\",covid,x,P1\n").unwrap();
        assert_eq!(manifest.entries[0].series, Path::new("/data/a\nb"));
    }

    #[test]
    fn parse_columns_in_any_order_without_truth() {
        let manifest = parse("patient_id,Centre,LABEL,series\nP1,x,other,s1\n").unwrap();
        assert_eq!(manifest.entries[0].series, Path::new("/data/s1"));
        assert_eq!(manifest.entries[0].label, ScanLabel::Other);
        assert_eq!(manifest.entries[0].infected_percent, None);
    }

    #[test]
    fn parse_byte_order_mark_and_header_only() {
        let manifest = parse("\u{feff}series,label,centre,patient_id\n").unwrap();
        assert!(manifest.entries.is_empty());
    }

    #[test]
    fn errors_name_line_and_problem() {
        let cases: Vec<(String, usize, ManifestProblem)> = vec![
            (String::new(), 1, ManifestProblem::MissingHeader),
            (
                "series,label,patient_id\n".to_string(),
                1,
                ManifestProblem::MissingColumn("centre"),
            ),
            (
                "series,label,centre,patient_id,site\n".to_string(),
                1,
                ManifestProblem::UnknownColumn("site".to_string()),
            ),
            (
                "series,label,centre,patient_id,label\n".to_string(),
                1,
                ManifestProblem::DuplicateColumn("label".to_string()),
            ),
            (
                format!("{HEADER}s1,covid,x,P1,1\ns2,covid,x,P2\n"),
                3,
                ManifestProblem::FieldCount {
                    expected: 5,
                    found: 4,
                },
            ),
            (
                format!("{HEADER}s1,flu,x,P1,\n"),
                2,
                ManifestProblem::UnknownLabel(
                    "unknown label \"flu\": expected healthy, covid or other".to_string(),
                ),
            ),
            (
                format!("{HEADER}s1,covid,x,P1,\n\ns2,covid,x,  ,\n"),
                4,
                ManifestProblem::EmptyField("patient_id"),
            ),
            (
                format!("{HEADER},covid,x,P1,\n"),
                2,
                ManifestProblem::EmptyField("series"),
            ),
            (
                format!("{HEADER}s1,covid,,P1,\n"),
                2,
                ManifestProblem::EmptyField("centre"),
            ),
            (
                format!("{HEADER}s1,covid,x,P1,4.2%\n"),
                2,
                ManifestProblem::BadNumber {
                    column: "infected_percent",
                    value: "4.2%".to_string(),
                },
            ),
            (
                format!("{HEADER}s1,covid,x,P1,101\n"),
                2,
                ManifestProblem::BadNumber {
                    column: "infected_percent",
                    value: "101".to_string(),
                },
            ),
            (
                format!("{HEADER}s1,covid,x,P1,NaN\n"),
                2,
                ManifestProblem::BadNumber {
                    column: "infected_percent",
                    value: "NaN".to_string(),
                },
            ),
            (
                format!("{HEADER}s1,covid,x,P1,\ns2,covid,x,P2,\n./s1,other,y,P3,\n"),
                4,
                ManifestProblem::DuplicateSeries {
                    series: PathBuf::from("/data/s1"),
                    first_line: 2,
                },
            ),
            (
                format!("{HEADER}s1,covid,x,P1,\n\"s2,covid,x,P2,\n"),
                3,
                ManifestProblem::UnterminatedQuote,
            ),
            (
                format!("{HEADER}s1,covid,x,P\"1,\n"),
                2,
                ManifestProblem::QuoteInUnquotedField,
            ),
            (
                format!("{HEADER}\"s1\"x,covid,x,P1,\n"),
                2,
                ManifestProblem::TextAfterQuote,
            ),
        ];
        for (text, line, problem) in cases {
            assert_eq!(parse(&text), Err((line, problem)), "manifest text {text:?}");
        }
    }

    #[test]
    fn read_error_names_path_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.csv");
        std::fs::write(&path, format!("{HEADER}s1,covid,x,,\n")).unwrap();
        let error = Manifest::read(&path).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("manifest.csv, line 2: empty patient_id"),
            "{message}"
        );
        assert!(
            matches!(error, ManifestError::Invalid { line: 2, .. }),
            "{error:?}"
        );

        let missing = Manifest::read(&dir.path().join("absent.csv")).unwrap_err();
        assert!(matches!(missing, ManifestError::Read { .. }), "{missing:?}");
        // The message carries the I/O error, so it is not also the source: error chain
        // printers would repeat it.
        assert!(missing.to_string().contains("absent.csv"), "{missing}");
        assert!(std::error::Error::source(&missing).is_none(), "{missing}");
    }

    #[test]
    fn read_resolves_relative_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.csv");
        let text = format!("{HEADER}scans/one,covid,x,P1,\n/elsewhere/two,healthy,x,P2,\n");
        std::fs::write(&path, text).unwrap();
        let manifest = Manifest::read(&path).unwrap();
        assert_eq!(manifest.entries[0].series, dir.path().join("scans/one"));
        assert_eq!(manifest.entries[1].series, Path::new("/elsewhere/two"));
    }

    #[test]
    fn write_then_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("set").join("manifest.csv");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut entries = vec![
            entry("", ScanLabel::Covid, "riverside", "P1"),
            entry("", ScanLabel::Healthy, "St. Anne's, \"north\"", " P2 "),
            entry("/elsewhere/three", ScanLabel::Other, "lakeside", "P3"),
        ];
        entries[0].series = dir.path().join("set/riverside/covid-0001");
        entries[0].infected_percent = Some(0.1 + 0.2);
        entries[1].series = dir.path().join("set/with, comma");
        entries[1].infected_percent = Some(0.0);
        let manifest = Manifest { entries };

        manifest.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(
            text.contains("\nriverside/covid-0001,covid,riverside,P1,0.30000000000000004\n"),
            "{text}"
        );
        assert!(
            text.contains("\n/elsewhere/three,other,lakeside,P3,\n"),
            "{text}"
        );
        assert!(!path.with_extension("csv.tmp").exists());

        assert_eq!(Manifest::read(&path).unwrap(), manifest);
    }

    /// Builds 300 patients, 100 per label, over centres a to c, and 30 more at the
    /// held-out centre h. Every tenth patient of a to c has a second scan there.
    fn cohort() -> Vec<ManifestEntry> {
        let labels = [ScanLabel::Healthy, ScanLabel::Covid, ScanLabel::Other];
        let mut entries = Vec::new();
        for patient in 0..300 {
            let label = labels[patient % 3];
            let centre = ["a", "b", "c"][(patient / 3) % 3];
            let id = format!("P{patient:03}");
            entries.push(entry(&format!("{centre}/{id}-1"), label, centre, &id));
            if patient % 10 == 0 {
                entries.push(entry(&format!("{centre}/{id}-2"), label, centre, &id));
            }
        }
        for patient in 0..30 {
            let id = format!("H{patient:03}");
            entries.push(entry(&format!("h/{id}"), labels[patient % 3], "h", &id));
        }
        entries
    }

    #[test]
    fn split_proportions_per_label() {
        let entries = cohort();
        let parts = split(&entries, &["h".to_string()], 7);
        let expected = [
            (Split::Train, 81),
            (Split::Validation, 9),
            (Split::Test, 10),
        ];
        for label in [ScanLabel::Healthy, ScanLabel::Covid, ScanLabel::Other] {
            for (part, expected_patients) in expected {
                let mut patients: Vec<&str> = entries
                    .iter()
                    .zip(&parts)
                    .filter(|(entry, &p)| entry.label == label && p == part)
                    .map(|(entry, _)| entry.patient_id.as_str())
                    .collect();
                patients.sort_unstable();
                patients.dedup();
                let count = patients.len() as i64;
                assert!(
                    (count - expected_patients).abs() <= 2,
                    "{} {}: {count} patients, expected {expected_patients}",
                    label.name(),
                    part.name()
                );
            }
        }
    }

    #[test]
    fn split_keeps_patients_together() {
        let entries = cohort();
        let parts = split(&entries, &["h".to_string()], 7);
        let mut part_of: HashMap<&str, Split> = HashMap::new();
        for (entry, &part) in entries.iter().zip(&parts) {
            let first = *part_of.entry(&entry.patient_id).or_insert(part);
            assert_eq!(first, part, "patient {} is in two parts", entry.patient_id);
        }
        // Moving a patient's second scan to the end of the list changes nothing.
        let mut reordered = entries.clone();
        let moved = reordered.remove(1);
        reordered.push(moved);
        let reordered_parts = split(&reordered, &["h".to_string()], 7);
        assert_eq!(reordered_parts[reordered.len() - 1], parts[1]);
    }

    #[test]
    fn split_holds_out_centres() {
        let entries = cohort();
        let parts = split(&entries, &["h".to_string()], 7);
        for (entry, part) in entries.iter().zip(&parts) {
            let held_out = entry.centre == "h";
            assert_eq!(
                *part == Split::HeldOutCentre,
                held_out,
                "{}",
                entry.series.display()
            );
        }

        let two = split(&entries, &["h".to_string(), "a".to_string()], 7);
        let held_out = two
            .iter()
            .filter(|&&part| part == Split::HeldOutCentre)
            .count();
        let expected = entries
            .iter()
            .filter(|entry| entry.centre == "h" || entry.centre == "a")
            .count();
        assert_eq!(held_out, expected);

        let none = split(&entries, &[], 7);
        assert!(!none.contains(&Split::HeldOutCentre));
    }

    #[test]
    fn split_depends_only_on_seed() {
        let entries = cohort();
        let holdout = ["h".to_string()];
        assert_eq!(split(&entries, &holdout, 7), split(&entries, &holdout, 7));
        let other_seed = split(&entries, &holdout, 8);
        let differing = split(&entries, &holdout, 7)
            .iter()
            .zip(&other_seed)
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            differing >= 20,
            "only {differing} scans change part with another seed"
        );
    }
}
