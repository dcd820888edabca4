//! DICOM C-STORE: an SCP that receives CT instances from scanners and PACS, and a small
//! SCU ([`send_files`], [`echo`]) for tests and the command line.
//!
//! The SCP accepts an association only from a calling AE title that belongs to a tenant,
//! and only when the called AE title is its own. Each received instance becomes a DICOM
//! Part 10 file (a file meta group built from the command set and the presentation
//! context, then the data set bytes as received) and goes through [`Intake::accept`].
//! When the sender releases the association, every series that received an instance is
//! committed ([`CommitTrigger::AssociationReleased`]). An aborted or dropped association
//! commits nothing: the assembler's quiet period completes those series.
//!
//! dicom-ul 0.10 is used without its `async` feature, so each association runs on a
//! blocking thread and calls the async intake through the runtime's [`Handle`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::transfer_syntax::{AdapterFreeTransferSyntax, Codec, Endianness};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::association::{Association, ClientAssociation, ClientAssociationOptions, ServerAssociation};
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRJServiceUserReason, AssociationRJSource, PDataValue, PDataValueType, PresentationContextResultReason,
    UserIdentity,
};
use dicom_ul::Pdu;
use lungstream_schemas::events::{CommitTrigger, IngestSource};
use lungstream_schemas::ReasonCode;
use tokio::runtime::Handle;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::intake::{Intake, Rejected};
use crate::tenants::Tenants;

/// Implementation Class UID written into the file meta group of every received instance:
/// `2.25.` and the decimal form of a random UUID (d25282a2-8b2c-4a96-92a0-7447172d361c),
/// a UUID derived UID as PS3.5 section B.2 describes.
///
/// NOTE: PS3.5 B.2 advises a registered root for Implementation Class UIDs. The project
/// has none, so this UID relies on the UUID for uniqueness; replace it if one is obtained.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.279566297048514952537243710875757262364";

/// Implementation Version Name written next to [`IMPLEMENTATION_CLASS_UID`] (at most 16
/// characters, VR SH).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("LSTREAM_", env!("CARGO_PKG_VERSION"));

/// SOP classes the SCP stores. The intake also checks the SOP class of each instance.
pub const STORAGE_SOP_CLASSES: &[&str] = &[uids::CT_IMAGE_STORAGE, uids::ENHANCED_CT_IMAGE_STORAGE];

/// Transfer syntaxes the SCP accepts: the uncompressed ones, deflate, and the lossless or
/// near-lossless codecs that this workspace builds decoders for (dicom-pixeldata with
/// `native`, `openjpeg-sys` and `charls`). Lossy JPEG baseline and extended are left out:
/// 8-bit samples cannot hold Hounsfield units, and the JPEG decoder reads no 12-bit data.
///
/// NOTE: the list is fixed, not read from the transfer syntax registry, because this crate
/// does not depend on dicom-transfer-syntax-registry. The intake still refuses an instance
/// whose pixel data this build cannot decode (`unsupported_transfer_syntax`).
pub const TRANSFER_SYNTAXES: &[&str] = &[
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
    uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    // Explicit VR Big Endian: retired, but old archives still send it, and the reader
    // supports it. dicom-dictionary-std marks its constant deprecated.
    "1.2.840.10008.1.2.2",
    uids::JPEG_LOSSLESS,
    uids::JPEG_LOSSLESS_SV1,
    uids::RLE_LOSSLESS,
    uids::JPEGLS_LOSSLESS,
    uids::JPEGLS_NEAR_LOSSLESS,
    uids::JPEG2000_LOSSLESS,
    uids::JPEG2000,
];

/// C-STORE and C-ECHO status codes: those of PS3.4 Table B.2-1 and the general ones of
/// PS3.7.
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Rejected: SOP Class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    /// Rejected: Out of Resources (A7xx). Sending the instance again may work.
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: Data Set does not match SOP Class (A9xx).
    pub const DATA_SET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
    /// Error: Cannot understand (Cxxx).
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Error: Cannot understand, sub-code 001: another instance with the same SOP
    /// Instance UID and different bytes is stored. The C-STORE status table has no code
    /// for this, and Duplicate SOP Instance (0111) is an N-CREATE status, so this code
    /// uses the Cxxx range that the table leaves to the SCP.
    pub const CONFLICTING_INSTANCE: u16 = 0xC001;
}

/// Maximum length of Error Comment (0000,0902), whose VR is LO.
const ERROR_COMMENT_MAX_CHARS: usize = 64;

/// Time that either side waits for the next PDU before giving up on the association.
/// It also bounds how long shutdown waits for an idle association.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest command set accepted. Typical command sets have a few hundred bytes.
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Pause after a failed `accept` (for example when the process is out of file
/// descriptors), so the loop does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Command Field (0000,0100) values.
const C_STORE_RQ: u16 = 0x0001;
const C_STORE_RSP: u16 = 0x8001;
const C_ECHO_RQ: u16 = 0x0030;
const C_ECHO_RSP: u16 = 0x8030;
const C_CANCEL_RQ: u16 = 0x0FFF;
const RESPONSE_BIT: u16 = 0x8000;

/// Command Data Set Type value that means "no data set"; any other value means one follows.
const NO_DATA_SET: u16 = 0x0101;

/// Command sets are always encoded in implicit VR little endian, whatever the presentation
/// context.
const COMMAND_TRANSFER_SYNTAX: AdapterFreeTransferSyntax =
    AdapterFreeTransferSyntax::new(uids::IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", Endianness::Little, false, Codec::None);

/// Configuration and collaborators of the C-STORE SCP.
pub struct CStoreScp {
    pub intake: Intake,
    pub tenants: Arc<Tenants>,
    /// This SCP's AE title; associations that call another title are rejected.
    pub ae_title: String,
    /// Largest PDU this SCP receives, bytes (announced in A-ASSOCIATE-AC).
    pub max_pdu: u32,
    /// Maximum associations at once, each on a blocking thread. Further connections wait
    /// in the listen backlog until one ends.
    pub max_associations: usize,
}

/// Accepts associations on `listener` until `shutdown` is cancelled, each on its own
/// blocking thread. After shutdown it accepts no new association and waits for those in
/// flight to end: released by the sender, aborted, or idle for one minute.
///
/// # Errors
///
/// None at present: connection errors are logged and the loop goes on. The `Result`
/// lets the service treat this task like its other parts.
pub async fn serve(listener: tokio::net::TcpListener, scp: Arc<CStoreScp>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let runtime = Handle::current();
    let mut associations = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = associations.join_next(), if !associations.is_empty() => log_join_error(joined),
            accepted = listener.accept(), if associations.len() < scp.max_associations.max(1) => match accepted {
                Ok((stream, peer)) => match into_blocking_stream(stream) {
                    Ok(stream) => {
                        let scp = scp.clone();
                        let runtime = runtime.clone();
                        associations.spawn_blocking(move || run_association(&scp, &runtime, stream, peer));
                    }
                    Err(error) => tracing::warn!(%peer, "Cannot prepare the connection for an association: {error}."),
                },
                Err(error) => {
                    tracing::warn!("Cannot accept a DICOM connection: {error}; retrying in {ACCEPT_RETRY_DELAY:?}.");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                }
            },
        }
    }
    drop(listener);
    if !associations.is_empty() {
        tracing::info!(in_flight = associations.len(), "C-STORE SCP stopped accepting; waiting for the associations in flight.");
    }
    while let Some(joined) = associations.join_next().await {
        log_join_error(joined);
    }
    tracing::info!("C-STORE SCP stopped.");
    Ok(())
}

fn into_blocking_stream(stream: tokio::net::TcpStream) -> std::io::Result<TcpStream> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    // Each C-STORE-RSP is one small write that the sender waits for. Without TCP_NODELAY,
    // Nagle's algorithm and delayed ACKs can hold it back by tens of milliseconds.
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn log_join_error(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        tracing::error!("A C-STORE association task failed: {error}.");
    }
}

/// Admits a calling AE title that belongs to a tenant, calling this SCP's AE title.
struct TenantAccess {
    tenants: Arc<Tenants>,
    peer: SocketAddr,
}

impl AccessControl for TenantAccess {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if self.tenants.by_ae_title(calling_ae_title).is_none() {
            tracing::warn!(peer = %self.peer, calling_ae_title = ?calling_ae_title.trim(), "Association rejected: calling AE title not recognized.");
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        if called_ae_title.trim() != this_ae_title.trim() {
            tracing::warn!(
                peer = %self.peer,
                calling_ae_title = ?calling_ae_title.trim(),
                called_ae_title = ?called_ae_title.trim(),
                "Association rejected: the called AE title is not this SCP's."
            );
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        Ok(())
    }
}

/// Outcome of an association.
#[derive(Debug)]
enum End {
    Released,
    Aborted,
    /// The connection closed, timed out or failed without A-RELEASE or A-ABORT.
    Lost(String),
    /// The peer broke the protocol; this SCP sent A-ABORT.
    ProtocolError(String),
}

impl End {
    fn as_str(&self) -> &'static str {
        match self {
            End::Released => "released",
            End::Aborted => "aborted",
            End::Lost(_) => "connection lost",
            End::ProtocolError(_) => "protocol error",
        }
    }
}

/// Negotiates one association on `stream` and serves it until it ends.
fn run_association(scp: &CStoreScp, runtime: &Handle, stream: TcpStream, peer: SocketAddr) {
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(TenantAccess {
            tenants: scp.tenants.clone(),
            peer,
        })
        .ae_title(scp.ae_title.as_str())
        .max_pdu_length(scp.max_pdu)
        .read_timeout(IDLE_TIMEOUT)
        .write_timeout(IDLE_TIMEOUT)
        .with_abstract_syntax(uids::VERIFICATION);
    for sop_class in STORAGE_SOP_CLASSES {
        options = options.with_abstract_syntax(*sop_class);
    }
    for transfer_syntax in TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(*transfer_syntax);
    }

    let mut association = match options.establish(stream) {
        Ok(association) => association,
        Err(dicom_ul::association::Error::Rejected { association_rj, .. }) => {
            let title_rejected = matches!(
                association_rj.source,
                AssociationRJSource::ServiceUser(
                    AssociationRJServiceUserReason::CallingAETitleNotRecognized | AssociationRJServiceUserReason::CalledAETitleNotRecognized
                )
            );
            // TenantAccess has logged AE title rejections with the titles.
            if !title_rejected {
                tracing::warn!(%peer, "Association rejected: {}.", association_rj.source);
            }
            return;
        }
        Err(error) => {
            tracing::warn!(%peer, "Cannot establish a DICOM association: {}.", describe(&error));
            return;
        }
    };
    let Some(hospital_id) = scp.tenants.by_ae_title(association.peer_ae_title()).map(str::to_string) else {
        // Unreachable: TenantAccess admitted this title, and Tenants has no methods that
        // change it after construction.
        tracing::error!(%peer, "The calling AE title of an accepted association has no tenant; aborting.");
        let _ = association.abort();
        return;
    };
    let hospital = hospital_id.as_str();

    let mut contexts = BTreeMap::new();
    let mut rejected_contexts = 0;
    for context in association.presentation_contexts() {
        if context.reason == PresentationContextResultReason::Acceptance {
            contexts.insert(context.id, (context.abstract_syntax.clone(), context.transfer_syntax.clone()));
        } else {
            rejected_contexts += 1;
            tracing::debug!(%peer, abstract_syntax = %context.abstract_syntax, reason = ?context.reason, "Presentation context rejected.");
        }
    }
    tracing::info!(
        hospital,
        %peer,
        accepted_contexts = contexts.len(),
        rejected_contexts,
        "C-STORE association started."
    );

    let mut session = Session {
        intake: &scp.intake,
        runtime,
        hospital,
        contexts,
        series: BTreeSet::new(),
        counts: Counts::default(),
    };
    let end = session.run(&mut association);
    drop(association);

    if matches!(end, End::Released) {
        session.commit_series();
    }
    let Counts {
        stored,
        duplicates,
        refused,
        refused_by_reason,
        echoes,
    } = &session.counts;
    let detail = match &end {
        End::Lost(detail) | End::ProtocolError(detail) => detail.as_str(),
        End::Released | End::Aborted => "",
    };
    tracing::info!(
        hospital,
        %peer,
        end = end.as_str(),
        detail,
        stored,
        duplicates,
        refused,
        ?refused_by_reason,
        echoes,
        series = session.series.len(),
        "C-STORE association ended."
    );
}

#[derive(Default)]
struct Counts {
    /// Instances stored for the first time.
    stored: usize,
    /// Instances whose identical bytes were already stored.
    duplicates: usize,
    /// Instances whose response has a failure status.
    refused: usize,
    refused_by_reason: BTreeMap<&'static str, usize>,
    echoes: usize,
}

/// The state of one established association.
struct Session<'a> {
    intake: &'a Intake,
    runtime: &'a Handle,
    hospital: &'a str,
    /// Accepted presentation contexts: id → (abstract syntax, transfer syntax).
    contexts: BTreeMap<u8, (String, String)>,
    /// (Study Instance UID, Series Instance UID) of every series that received an instance.
    series: BTreeSet<(String, String)>,
    counts: Counts,
}

/// A C-STORE-RSP or C-ECHO-RSP to send on a presentation context.
struct Response {
    context_id: u8,
    command: Vec<u8>,
}

/// Status and reason for a C-STORE-RQ that was not stored, set by the SCP itself or by
/// the intake.
struct Refusal {
    status: u16,
    reason: ReasonCode,
    /// A sentence without patient attributes.
    detail: String,
    transient: bool,
}

impl Refusal {
    fn new(status: u16, reason: ReasonCode, detail: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason,
            detail: detail.into(),
            transient: false,
        }
    }
}

impl Session<'_> {
    /// Receives PDUs and sends a response to each DIMSE request until the association
    /// ends. Replies to A-RELEASE-RQ with A-RELEASE-RP, and the caller commits afterwards.
    fn run(&mut self, association: &mut ServerAssociation<TcpStream>) -> End {
        let mut messages = MessageAssembler::new(self.intake.reader.max_file_bytes);
        loop {
            let pdu = match association.receive() {
                Ok(pdu) => pdu,
                Err(error) => return End::Lost(describe(&error)),
            };
            match pdu {
                Pdu::PData { data } => {
                    for value in data {
                        let message = if self.contexts.contains_key(&value.presentation_context_id) {
                            messages.push(value)
                        } else {
                            Err(format!("P-DATA on presentation context {}, which was not accepted", value.presentation_context_id))
                        };
                        let response = match message {
                            Ok(None) => continue,
                            Ok(Some(message)) => self.handle(message),
                            Err(problem) => return abort(association, problem),
                        };
                        let response = match response {
                            Ok(Some(response)) => response,
                            Ok(None) => continue,
                            Err(problem) => return abort(association, problem),
                        };
                        let pdu = Pdu::PData {
                            data: vec![PDataValue {
                                presentation_context_id: response.context_id,
                                value_type: PDataValueType::Command,
                                is_last: true,
                                data: response.command,
                            }],
                        };
                        if let Err(error) = association.send(&pdu) {
                            return End::Lost(format!("cannot send a response: {}", describe(&error)));
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    if let Err(error) = association.send(&Pdu::ReleaseRP) {
                        tracing::warn!(hospital = self.hospital, "Cannot send A-RELEASE-RP: {error}.");
                    }
                    return End::Released;
                }
                Pdu::AbortRQ { .. } => return End::Aborted,
                other => return abort(association, format!("unexpected PDU {}", other.short_description())),
            }
        }
    }

    /// Handles one complete DIMSE message and builds its response. Returns `None` for
    /// messages without a response (C-CANCEL), and an error for a message that breaks
    /// the protocol.
    fn handle(&mut self, message: Message) -> Result<Option<Response>, String> {
        let command_field = command_u16(&message.command, tags::COMMAND_FIELD).ok_or("a command set without Command Field")?;
        if command_field == C_CANCEL_RQ {
            return Ok(None);
        }
        if command_field & RESPONSE_BIT != 0 {
            return Err(format!("unexpected response message (Command Field {command_field:#06x})"));
        }
        let message_id = command_u16(&message.command, tags::MESSAGE_ID).ok_or("a request without Message ID")?;
        let sop_class_uid = command_str(&message.command, tags::AFFECTED_SOP_CLASS_UID).unwrap_or_default();
        let context_id = message.context_id;

        let command = match command_field {
            C_ECHO_RQ => {
                self.counts.echoes += 1;
                let sop_class_uid = if sop_class_uid.is_empty() { uids::VERIFICATION } else { &sop_class_uid };
                response_command(C_ECHO_RSP, sop_class_uid, message_id, status::SUCCESS, None, None)
            }
            C_STORE_RQ => {
                let sop_instance_uid = command_str(&message.command, tags::AFFECTED_SOP_INSTANCE_UID).unwrap_or_default();
                let (code, comment) = self.store(&message, message_id, &sop_class_uid, &sop_instance_uid);
                response_command(C_STORE_RSP, &sop_class_uid, message_id, code, Some(&sop_instance_uid), comment.as_deref())
            }
            other => {
                tracing::info!(hospital = self.hospital, command_field = %format_args!("{other:#06x}"), "Unsupported DIMSE request.");
                let comment = format!("Command Field {other:#06x} is not supported");
                response_command(other | RESPONSE_BIT, &sop_class_uid, message_id, status::UNRECOGNIZED_OPERATION, None, Some(&comment))
            }
        };
        let command = command.map_err(|e| format!("cannot encode a response: {e:#}"))?;
        Ok(Some(Response { context_id, command }))
    }

    /// Stores the instance of a C-STORE-RQ. Returns the response status and Error Comment.
    fn store(&mut self, message: &Message, message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> (u16, Option<String>) {
        let label = format!("C-STORE message {message_id}");
        match self.store_instance(message, &label, sop_class_uid, sop_instance_uid) {
            Ok(()) => (status::SUCCESS, None),
            Err(refusal) => {
                self.record_refusal(message_id, &refusal);
                (refusal.status, Some(error_comment(refusal.reason, &refusal.detail, &label)))
            }
        }
    }

    fn store_instance(&mut self, message: &Message, label: &str, sop_class_uid: &str, sop_instance_uid: &str) -> Result<(), Refusal> {
        let (abstract_syntax, transfer_syntax) = &self.contexts[&message.context_id];
        if abstract_syntax == uids::VERIFICATION {
            let detail = "C-STORE on the Verification presentation context";
            return Err(Refusal::new(status::SOP_CLASS_NOT_SUPPORTED, ReasonCode::NotCt, detail));
        }
        if sop_class_uid.is_empty() || sop_instance_uid.is_empty() {
            let detail = "the C-STORE-RQ lacks Affected SOP Class UID or Affected SOP Instance UID";
            return Err(Refusal::new(status::CANNOT_UNDERSTAND, ReasonCode::InvalidDicom, detail));
        }
        let Some(data_set) = &message.data_set else {
            let detail = "the C-STORE-RQ has no data set";
            return Err(Refusal::new(status::CANNOT_UNDERSTAND, ReasonCode::InvalidDicom, detail));
        };
        if message.data_set_too_large {
            let detail = format!(
                "the data set has {} bytes, above the limit of {}",
                message.data_set_bytes, self.intake.reader.max_file_bytes
            );
            return Err(Refusal::new(status::CANNOT_UNDERSTAND, ReasonCode::TooLarge, detail));
        }
        if sop_class_uid != abstract_syntax {
            // Not refused here: the intake refuses a SOP class that is not CT as
            // `not_ct`, which the response reports as "Data Set does not match SOP Class".
            tracing::debug!(
                hospital = self.hospital,
                sop_class_uid,
                abstract_syntax = abstract_syntax.as_str(),
                "{label}: the SOP class differs from the presentation context's."
            );
        }
        let file = part10_file(sop_class_uid, sop_instance_uid, transfer_syntax, data_set).map_err(|error| {
            let detail = format!("cannot build the file meta group: {error:#}");
            Refusal::new(status::CANNOT_UNDERSTAND, ReasonCode::InvalidDicom, detail)
        })?;

        let accepted = self
            .runtime
            .block_on(self.intake.accept(self.hospital, Bytes::from(file), IngestSource::CStore, label))
            .map_err(|refused| Refusal {
                status: status_for_refusal(&refused),
                reason: refused.reason,
                detail: refused.detail,
                transient: refused.transient,
            })?;
        if accepted.duplicate {
            self.counts.duplicates += 1;
        } else {
            self.counts.stored += 1;
        }
        if accepted.sop_instance_uid != sop_instance_uid {
            tracing::warn!(
                hospital = self.hospital,
                "{label}: the data set's SOP Instance UID differs from the command's; the instance is stored under the data set's."
            );
        }
        self.series.insert((accepted.study_uid, accepted.series_uid));
        Ok(())
    }

    /// Counts a refusal and logs it: the first of each reason code in an association as
    /// a warning, the rest at debug level, so a series of rejected slices logs one line.
    fn record_refusal(&mut self, message_id: u16, refusal: &Refusal) {
        self.counts.refused += 1;
        let seen = self.counts.refused_by_reason.entry(refusal.reason.as_str()).or_insert(0);
        *seen += 1;
        if *seen == 1 {
            tracing::warn!(
                hospital = self.hospital,
                message_id,
                reason = %refusal.reason,
                transient = refusal.transient,
                status = %format_args!("{:#06x}", refusal.status),
                "C-STORE refused: {}.",
                refusal.detail
            );
        } else {
            tracing::debug!(hospital = self.hospital, message_id, reason = %refusal.reason, "C-STORE instance rejected: {}.", refusal.detail);
        }
    }

    /// Publishes a commit for every series that received an instance. A failure is
    /// logged only: the assembler's quiet period still completes the series.
    fn commit_series(&self) {
        for (study_uid, series_uid) in &self.series {
            let committed = self
                .runtime
                .block_on(self.intake.commit(self.hospital, study_uid, series_uid, CommitTrigger::AssociationReleased));
            if let Err(error) = committed {
                tracing::warn!(hospital = self.hospital, series_uid = series_uid.as_str(), "Cannot publish the commit of a series: {error}; its quiet period will complete it.");
            }
        }
    }
}

/// Returns an error's message followed by the messages of its sources.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Sends A-ABORT for a protocol error and reports it.
fn abort(association: &mut ServerAssociation<TcpStream>, problem: String) -> End {
    let pdu = Pdu::AbortRQ {
        source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::UnexpectedPdu),
    };
    if let Err(error) = association.send(&pdu) {
        tracing::debug!("Cannot send A-ABORT: {error}.");
    }
    End::ProtocolError(problem)
}

/// Maps an intake refusal to a C-STORE status.
pub fn status_for_refusal(refused: &Rejected) -> u16 {
    if refused.transient {
        return status::OUT_OF_RESOURCES;
    }
    match refused.reason {
        ReasonCode::NotCt => status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        ReasonCode::ConflictingInstance => status::CONFLICTING_INSTANCE,
        _ => status::CANNOT_UNDERSTAND,
    }
}

/// Builds an Error Comment: the reason code, then the detail without its leading label,
/// cut to 64 characters. Characters that LO does not allow (non-ASCII, control
/// characters, backslash) become spaces.
pub fn error_comment(reason: ReasonCode, detail: &str, label: &str) -> String {
    let detail = detail.strip_prefix(label).and_then(|rest| rest.strip_prefix(": ")).unwrap_or(detail);
    let text = format!("{reason}: {detail}");
    let comment: String = text
        .chars()
        .map(|c| if c.is_ascii() && !c.is_ascii_control() && c != '\\' { c } else { ' ' })
        .take(ERROR_COMMENT_MAX_CHARS)
        .collect();
    comment.trim_end().to_string()
}

/// Builds a DICOM Part 10 file: preamble, `DICM`, a file meta group naming the SOP class,
/// SOP instance and transfer syntax, then `data_set` unchanged.
pub fn part10_file(sop_class_uid: &str, sop_instance_uid: &str, transfer_syntax: &str, data_set: &[u8]) -> anyhow::Result<Vec<u8>> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class_uid)
        .media_storage_sop_instance_uid(sop_instance_uid)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .build()?;
    let mut file = Vec::with_capacity(132 + 256 + data_set.len());
    file.extend_from_slice(&[0; 128]);
    file.extend_from_slice(b"DICM");
    meta.write(&mut file)?;
    file.extend_from_slice(data_set);
    Ok(file)
}

/// One DIMSE message received in full.
struct Message {
    context_id: u8,
    command: InMemDicomObject,
    /// `None` when the command announces no data set. Empty when the data set was too
    /// large and was discarded.
    data_set: Option<Vec<u8>>,
    /// Size of the data set as received, bytes.
    data_set_bytes: u64,
    data_set_too_large: bool,
}

/// A message whose fragments are still arriving.
struct PartialMessage {
    context_id: u8,
    command_bytes: Vec<u8>,
    /// Set once the last command fragment has arrived.
    command: Option<InMemDicomObject>,
    data_set: Vec<u8>,
    data_set_bytes: u64,
}

/// Joins P-DATA fragments into DIMSE messages: first the command set, then the data set
/// when the command announces one. Data set bytes beyond
/// `max_data_set_bytes` are counted and dropped, so one oversized instance cannot
/// exhaust memory.
struct MessageAssembler {
    partial: Option<PartialMessage>,
    max_data_set_bytes: u64,
}

impl MessageAssembler {
    fn new(max_data_set_bytes: u64) -> MessageAssembler {
        MessageAssembler {
            partial: None,
            max_data_set_bytes,
        }
    }

    /// Adds one fragment. Returns the message once complete, or an error when the
    /// fragments break the protocol.
    fn push(&mut self, value: PDataValue) -> Result<Option<Message>, String> {
        let partial = self.partial.get_or_insert_with(|| PartialMessage {
            context_id: value.presentation_context_id,
            command_bytes: Vec::new(),
            command: None,
            data_set: Vec::new(),
            data_set_bytes: 0,
        });
        if partial.context_id != value.presentation_context_id {
            return Err(format!(
                "a fragment on presentation context {} while a message on context {} is incomplete",
                value.presentation_context_id, partial.context_id
            ));
        }

        match value.value_type {
            PDataValueType::Command => {
                if partial.command.is_some() {
                    return Err("a command fragment after the command set was complete".into());
                }
                partial.command_bytes.extend_from_slice(&value.data);
                if partial.command_bytes.len() > MAX_COMMAND_BYTES {
                    return Err(format!("a command set longer than {MAX_COMMAND_BYTES} bytes"));
                }
                if !value.is_last {
                    return Ok(None);
                }
                let command = InMemDicomObject::read_dataset_with_ts(partial.command_bytes.as_slice(), &COMMAND_TRANSFER_SYNTAX.erased())
                    .map_err(|e| format!("the command set cannot be parsed: {e}"))?;
                let has_data_set = command_u16(&command, tags::COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATA_SET);
                partial.command = Some(command);
                if has_data_set {
                    return Ok(None);
                }
            }
            PDataValueType::Data => {
                if partial.command.is_none() {
                    return Err("a data set fragment before the command set was complete".into());
                }
                partial.data_set_bytes += value.data.len() as u64;
                if partial.data_set_bytes <= self.max_data_set_bytes {
                    partial.data_set.extend_from_slice(&value.data);
                } else if !partial.data_set.is_empty() {
                    partial.data_set = Vec::new();
                }
                if !value.is_last {
                    return Ok(None);
                }
            }
        }

        let partial = self.partial.take().expect("a partial message exists");
        let command = partial.command.expect("the command set is complete");
        let has_data_set = command_u16(&command, tags::COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATA_SET);
        Ok(Some(Message {
            context_id: partial.context_id,
            command,
            data_set: has_data_set.then_some(partial.data_set),
            data_set_bytes: partial.data_set_bytes,
            data_set_too_large: partial.data_set_bytes > self.max_data_set_bytes,
        }))
    }
}

fn command_u16(command: &InMemDicomObject, tag: Tag) -> Option<u16> {
    command.get(tag)?.to_int::<u16>().ok()
}

fn command_str(command: &InMemDicomObject, tag: Tag) -> Option<String> {
    let value = command.get(tag)?.to_str().ok()?;
    Some(value.trim_end_matches(['\0', ' ']).to_string())
}

/// Encodes a response command set (implicit VR little endian, with its group length).
fn response_command(
    command_field: u16,
    sop_class_uid: &str,
    message_id: u16,
    status: u16,
    sop_instance_uid: Option<&str>,
    error_comment: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let mut elements = vec![
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(sop_class_uid)),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(command_field)),
        DataElement::new(tags::MESSAGE_ID_BEING_RESPONDED_TO, VR::US, PrimitiveValue::from(message_id)),
        DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(NO_DATA_SET)),
        DataElement::new(tags::STATUS, VR::US, PrimitiveValue::from(status)),
    ];
    if let Some(uid) = sop_instance_uid.filter(|uid| !uid.is_empty()) {
        elements.push(DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(uid)));
    }
    if let Some(comment) = error_comment {
        elements.push(DataElement::new(tags::ERROR_COMMENT, VR::LO, PrimitiveValue::from(comment)));
    }
    encode_command(elements)
}

fn encode_command(elements: Vec<DataElement<InMemDicomObject>>) -> anyhow::Result<Vec<u8>> {
    let command = InMemDicomObject::command_from_element_iter(elements);
    let mut bytes = Vec::new();
    command.write_dataset_with_ts(&mut bytes, &COMMAND_TRANSFER_SYNTAX.erased())?;
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------
// SCU

/// The response to one file sent by [`send_files`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOutcome {
    pub file: PathBuf,
    /// Status of the C-STORE-RSP, or [`status::SOP_CLASS_NOT_SUPPORTED`] set by
    /// [`send_files`] itself when the SCP accepted no presentation context for the file
    /// (the file was not sent, and `error_comment` explains why).
    pub status: u16,
    /// Error Comment (0000,0902) of the response, when present.
    pub error_comment: Option<String>,
}

impl StoreOutcome {
    /// Returns whether the SCP stored the file (status Success, or a Warning: Bxxx).
    pub fn is_success(&self) -> bool {
        self.status == status::SUCCESS || self.status & 0xF000 == 0xB000
    }
}

/// A file to send, with the file meta group values that [`send_files`] needs.
struct FileToSend {
    path: PathBuf,
    sop_class_uid: String,
    sop_instance_uid: String,
    transfer_syntax: String,
    /// Offset of the data set in the file, after the file meta group.
    data_set_offset: u64,
}

/// Checks that [`send_files`] can send a file: it is readable and has a DICOM Part 10
/// file meta group with the UIDs DIMSE needs.
///
/// # Errors
///
/// The reason the file cannot be sent.
pub fn check_sendable(path: &Path) -> anyhow::Result<()> {
    read_file_meta(path).map(|_| ())
}

/// Sends DICOM Part 10 files to a C-STORE SCP over one association and returns the
/// status of each, in the order of `files`. `address` is `host:port`.
///
/// The association proposes CT Image Storage (Enhanced CT Image Storage for files of
/// that class) once per transfer syntax found among the files, each with only that
/// transfer syntax, since files are sent as they are, never transcoded. A file of
/// another SOP class goes on the CT Image Storage context of its transfer syntax with
/// its own SOP Class UID in the command, so the SCP decides about it and reports the
/// reason in its response.
///
/// # Errors
///
/// Before connecting, a file that cannot be read or is not a DICOM Part 10 file: no
/// `DICM` prefix, or no SOP Class UID, SOP Instance UID or Transfer Syntax UID in the
/// file meta group. The error names the file, and nothing is sent.
///
/// After connecting, a rejected or failed association, or a missing or malformed
/// response. The outcomes of the files already sent are lost in that case.
pub fn send_files(address: &str, calling_ae: &str, called_ae: &str, files: &[PathBuf]) -> anyhow::Result<Vec<StoreOutcome>> {
    let to_send = files
        .iter()
        .map(|path| read_file_meta(path).with_context(|| format!("{}: cannot be sent over DIMSE", path.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut proposed: Vec<(&'static str, &str)> = Vec::new();
    for file in &to_send {
        let context = (proposed_abstract_syntax(&file.sop_class_uid), file.transfer_syntax.as_str());
        if !proposed.contains(&context) {
            proposed.push(context);
        }
    }
    // Presentation context ids are odd numbers from 1 to 255.
    if proposed.len() > 128 {
        bail!("the files need {} presentation contexts, more than the 128 one association allows", proposed.len());
    }
    let mut options = client_options(calling_ae, called_ae);
    for (abstract_syntax, transfer_syntax) in &proposed {
        options = options.with_presentation_context(*abstract_syntax, vec![*transfer_syntax]);
    }
    let mut association = options
        .establish(address)
        .with_context(|| format!("cannot open an association with {called_ae} at {address}"))?;
    association.inner_stream().set_nodelay(true)?;

    let mut outcomes = Vec::with_capacity(to_send.len());
    for (index, file) in to_send.iter().enumerate() {
        let abstract_syntax = proposed_abstract_syntax(&file.sop_class_uid);
        let context = association
            .presentation_contexts()
            .iter()
            .find(|pc| pc.abstract_syntax == abstract_syntax && pc.transfer_syntax == file.transfer_syntax)
            .map(|pc| pc.id);
        let Some(context_id) = context else {
            outcomes.push(StoreOutcome {
                file: file.path.clone(),
                status: status::SOP_CLASS_NOT_SUPPORTED,
                error_comment: Some(format!(
                    "not sent: the SCP rejected {abstract_syntax} with transfer syntax {}",
                    file.transfer_syntax
                )),
            });
            continue;
        };
        // Message IDs 1 to 65535, then around again.
        let message_id = (index % usize::from(u16::MAX)) as u16 + 1;
        let outcome = store_file(&mut association, context_id, message_id, file)
            .with_context(|| format!("{}: C-STORE failed after {index} of {} files", file.path.display(), to_send.len()))?;
        outcomes.push(outcome);
    }

    association.release().context("the association was not released cleanly")?;
    Ok(outcomes)
}

/// Sends C-ECHO to an SCP over a new association and returns the response status
/// (0 for success).
///
/// # Errors
///
/// The association is rejected or fails, or the response is missing or malformed.
pub fn echo(address: &str, calling_ae: &str, called_ae: &str) -> anyhow::Result<u16> {
    let mut association = client_options(calling_ae, called_ae)
        .with_presentation_context(uids::VERIFICATION, vec![uids::IMPLICIT_VR_LITTLE_ENDIAN])
        .establish(address)
        .with_context(|| format!("cannot open an association with {called_ae} at {address}"))?;
    let context_id = association.presentation_contexts()[0].id;
    let command = encode_command(vec![
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uids::VERIFICATION)),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(C_ECHO_RQ)),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(NO_DATA_SET)),
    ])?;
    send_command(&mut association, context_id, command)?;
    let response = receive_command(&mut association)?;
    let code = command_u16(&response, tags::STATUS).context("the C-ECHO-RSP has no Status")?;
    association.release().context("the association was not released cleanly")?;
    Ok(code)
}

fn client_options<'a>(calling_ae: &'a str, called_ae: &'a str) -> ClientAssociationOptions<'a> {
    ClientAssociationOptions::new()
        .calling_ae_title(calling_ae)
        .called_ae_title(called_ae)
        .connection_timeout(IDLE_TIMEOUT)
        .read_timeout(IDLE_TIMEOUT)
        .write_timeout(IDLE_TIMEOUT)
}

fn proposed_abstract_syntax(sop_class_uid: &str) -> &'static str {
    if sop_class_uid == uids::ENHANCED_CT_IMAGE_STORAGE {
        uids::ENHANCED_CT_IMAGE_STORAGE
    } else {
        uids::CT_IMAGE_STORAGE
    }
}

/// Sends one file as a C-STORE-RQ and waits for its C-STORE-RSP.
fn store_file(association: &mut ClientAssociation<TcpStream>, context_id: u8, message_id: u16, file: &FileToSend) -> anyhow::Result<StoreOutcome> {
    let mut reader = File::open(&file.path)?;
    reader.seek(SeekFrom::Start(file.data_set_offset))?;
    let mut data_set = Vec::new();
    reader.read_to_end(&mut data_set)?;

    let command = encode_command(vec![
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(file.sop_class_uid.as_str())),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(C_STORE_RQ)),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(message_id)),
        // Medium priority.
        DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(0u16)),
        // Any value but 0101H announces a data set.
        DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(0u16)),
        DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(file.sop_instance_uid.as_str())),
    ])?;
    send_command(association, context_id, command)?;
    let mut writer = association.send_pdata(context_id);
    writer.write_all(&data_set).context("cannot send the data set")?;
    writer.finish().context("cannot send the data set")?;

    let response = receive_command(association)?;
    let responded_to = command_u16(&response, tags::MESSAGE_ID_BEING_RESPONDED_TO);
    if responded_to != Some(message_id) {
        bail!("the response is for message {responded_to:?}, but message {message_id} was sent");
    }
    Ok(StoreOutcome {
        file: file.path.clone(),
        status: command_u16(&response, tags::STATUS).context("the C-STORE-RSP has no Status")?,
        error_comment: command_str(&response, tags::ERROR_COMMENT).filter(|c| !c.is_empty()),
    })
}

fn send_command(association: &mut ClientAssociation<TcpStream>, context_id: u8, command: Vec<u8>) -> anyhow::Result<()> {
    association
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command,
            }],
        })
        .context("cannot send the command set")
}

/// Receives PDUs until a complete command set has arrived and parses it.
fn receive_command(association: &mut ClientAssociation<TcpStream>) -> anyhow::Result<InMemDicomObject> {
    let mut bytes = Vec::new();
    loop {
        match association.receive().context("no response from the SCP")? {
            Pdu::PData { data } => {
                for value in data {
                    if value.value_type != PDataValueType::Command {
                        bail!("the SCP sent a data set where a response command was expected");
                    }
                    bytes.extend_from_slice(&value.data);
                    if value.is_last {
                        return InMemDicomObject::read_dataset_with_ts(bytes.as_slice(), &COMMAND_TRANSFER_SYNTAX.erased())
                            .context("the response command set cannot be parsed");
                    }
                }
            }
            Pdu::AbortRQ { source } => bail!("the SCP aborted the association ({source:?})"),
            other => bail!("unexpected PDU {} where a response was expected", other.short_description()),
        }
    }
}

/// Value representations whose explicit VR element header has a 4-byte length.
const LONG_LENGTH_VRS: &[&[u8; 2]] = &[b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"];

/// Largest file meta group read. Typical ones have a few hundred bytes.
const MAX_FILE_META_BYTES: u64 = 64 * 1024;

/// Reads the file meta group of a Part 10 file (explicit VR little endian, after the
/// preamble and `DICM`, or after `DICM` alone at the start of the file).
fn read_file_meta(path: &Path) -> anyhow::Result<FileToSend> {
    let mut reader = BufReader::new(File::open(path).context("cannot open the file")?);
    let mut head = [0u8; 132];
    reader
        .read_exact(&mut head)
        .context("not a DICOM Part 10 file: shorter than the preamble")?;
    let mut offset: u64 = if &head[128..132] == b"DICM" {
        132
    } else if &head[..4] == b"DICM" {
        reader.seek(SeekFrom::Start(4))?;
        4
    } else {
        bail!("not a DICOM Part 10 file: no DICM prefix at byte 0 or 128");
    };
    let meta_start = offset;

    let mut sop_class_uid = String::new();
    let mut sop_instance_uid = String::new();
    let mut transfer_syntax = String::new();
    loop {
        let mut header = [0u8; 8];
        reader.read_exact(&mut header).context("the file ends inside the file meta group")?;
        let group = u16::from_le_bytes([header[0], header[1]]);
        if group != 0x0002 {
            break;
        }
        let element = u16::from_le_bytes([header[2], header[3]]);
        let vr = [header[4], header[5]];
        if !vr.iter().all(u8::is_ascii_uppercase) {
            bail!("the file meta group is not explicit VR little endian");
        }
        let (length, header_len) = if LONG_LENGTH_VRS.contains(&&vr) {
            let mut length = [0u8; 4];
            reader.read_exact(&mut length).context("the file ends inside the file meta group")?;
            (u32::from_le_bytes(length), 12)
        } else {
            (u32::from(u16::from_le_bytes([header[6], header[7]])), 8)
        };
        if length == u32::MAX {
            bail!("an element of the file meta group has an undefined length");
        }
        offset += header_len + u64::from(length);
        if offset - meta_start > MAX_FILE_META_BYTES {
            bail!("the file meta group is longer than {MAX_FILE_META_BYTES} bytes");
        }
        let mut value = vec![0u8; length as usize];
        reader.read_exact(&mut value).context("the file ends inside the file meta group")?;
        let text = || String::from_utf8_lossy(&value).trim_end_matches(['\0', ' ']).to_string();
        match element {
            0x0002 => sop_class_uid = text(),
            0x0003 => sop_instance_uid = text(),
            0x0010 => transfer_syntax = text(),
            _ => {}
        }
    }

    for (value, name) in [
        (&sop_class_uid, "Media Storage SOP Class UID"),
        (&sop_instance_uid, "Media Storage SOP Instance UID"),
        (&transfer_syntax, "Transfer Syntax UID"),
    ] {
        if value.is_empty() {
            bail!("the file meta group has no {name}");
        }
    }
    Ok(FileToSend {
        path: path.to_path_buf(),
        sop_class_uid,
        sop_instance_uid,
        transfer_syntax,
        data_set_offset: offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(reason: ReasonCode, transient: bool) -> Rejected {
        Rejected {
            reason,
            detail: "C-STORE message 3: something".into(),
            sop_instance_uid: None,
            sop_class_uid: None,
            transient,
        }
    }

    #[test]
    fn refusals_map_to_store_statuses() {
        assert_eq!(status_for_refusal(&refused(ReasonCode::Unreadable, true)), status::OUT_OF_RESOURCES);
        assert_eq!(status_for_refusal(&refused(ReasonCode::NotCt, false)), status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS);
        assert_eq!(status_for_refusal(&refused(ReasonCode::ConflictingInstance, false)), status::CONFLICTING_INSTANCE);
        assert_eq!(status_for_refusal(&refused(ReasonCode::NotAxial, false)), status::CANNOT_UNDERSTAND);
    }

    #[test]
    fn error_comment_fits_lo() {
        let detail = "C-STORE message 3: not a CT image (Modality \"MR\", SOP Class \"1.2.840.10008.5.1.4.1.1.4\") \\ é";
        let comment = error_comment(ReasonCode::NotCt, detail, "C-STORE message 3");
        assert!(comment.starts_with("not_ct: not a CT image"), "{comment}");
        assert!(comment.len() <= ERROR_COMMENT_MAX_CHARS, "{comment}");
        assert!(comment.chars().all(|c| c.is_ascii() && !c.is_ascii_control() && c != '\\'), "{comment}");
    }

    #[test]
    fn implementation_names_are_valid() {
        assert!(IMPLEMENTATION_VERSION_NAME.len() <= 16, "{IMPLEMENTATION_VERSION_NAME}");
        assert!(IMPLEMENTATION_CLASS_UID.len() <= 64);
        assert!(IMPLEMENTATION_CLASS_UID.chars().all(|c| c.is_ascii_digit() || c == '.'));
    }

    #[test]
    fn part10_file_round_trips() {
        let data_set = InMemDicomObject::from_element_iter([
            DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uids::CT_IMAGE_STORAGE)),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3.4")),
            DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("CT")),
        ]);
        let mut data_set_bytes = Vec::new();
        data_set
            .write_dataset_with_ts(&mut data_set_bytes, &COMMAND_TRANSFER_SYNTAX.erased())
            .unwrap();

        let file = part10_file(uids::CT_IMAGE_STORAGE, "1.2.3.4", uids::IMPLICIT_VR_LITTLE_ENDIAN, &data_set_bytes).unwrap();
        assert_eq!(&file[128..132], b"DICM");
        assert!(file.ends_with(&data_set_bytes));

        let object = dicom_object::from_reader(&file[128..]).unwrap();
        assert_eq!(object.meta().media_storage_sop_class_uid().trim_end_matches('\0'), uids::CT_IMAGE_STORAGE);
        assert_eq!(object.meta().media_storage_sop_instance_uid().trim_end_matches('\0'), "1.2.3.4");
        assert_eq!(object.meta().transfer_syntax().trim_end_matches('\0'), uids::IMPLICIT_VR_LITTLE_ENDIAN);
        assert_eq!(object.meta().implementation_class_uid().trim_end_matches('\0'), IMPLEMENTATION_CLASS_UID);
        assert_eq!(object.element(tags::MODALITY).unwrap().to_str().unwrap(), "CT");
    }

    #[test]
    fn assembler_joins_fragments() {
        let command = encode_command(vec![
            DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uids::CT_IMAGE_STORAGE)),
            DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(C_STORE_RQ)),
            DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(1u16)),
            DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(0u16)),
            DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3")),
        ])
        .unwrap();

        let fragment = |value_type, is_last, data: &[u8]| PDataValue {
            presentation_context_id: 1,
            value_type,
            is_last,
            data: data.to_vec(),
        };
        let mut assembler = MessageAssembler::new(6);
        let (head, tail) = command.split_at(10);
        assert!(assembler.push(fragment(PDataValueType::Command, false, head)).unwrap().is_none());
        assert!(assembler.push(fragment(PDataValueType::Command, true, tail)).unwrap().is_none());
        assert!(assembler.push(fragment(PDataValueType::Data, false, b"abc")).unwrap().is_none());
        let message = assembler.push(fragment(PDataValueType::Data, true, b"def")).unwrap().unwrap();
        assert_eq!(message.data_set.as_deref(), Some(&b"abcdef"[..]));
        assert!(!message.data_set_too_large);

        assert!(assembler.push(fragment(PDataValueType::Command, true, &command)).unwrap().is_none());
        let message = assembler.push(fragment(PDataValueType::Data, true, b"1234567")).unwrap().unwrap();
        assert!(message.data_set_too_large);
        assert_eq!(message.data_set_bytes, 7);

        assert!(assembler.push(fragment(PDataValueType::Data, true, b"x")).is_err());
    }
}
