//! The C-STORE SCP against the SCU of the same module, with a memory bus and a memory
//! store: real CT series in, stored objects and `ct.instances.v1` events out.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::transfer_syntax::{AdapterFreeTransferSyntax, Codec, Endianness};
use dicom_object::InMemDicomObject;
use dicom_ul::association::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::Pdu;
use lungstream_ingest::config::{Limits, Tenant};
use lungstream_ingest::cstore::{self, status, CStoreScp, StoreOutcome};
use lungstream_ingest::intake::Intake;
use lungstream_ingest::tenants::Tenants;
use lungstream_runtime::{MemoryBus, Store};
use lungstream_schemas::events::{topics, CommitTrigger, IngestSource, InstanceBody, InstanceEvent};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SCP_AE_TITLE: &str = "LUNGSTREAM";
const CALLING_AE_TITLE: &str = "NORTH_CT";
const HOSPITAL: &str = "north";

/// Returns the real test data folder: `LUNGSTREAM_DATA`, or `../shared/data` beside the
/// workspace root.
fn data_dir() -> PathBuf {
    let dir = std::env::var_os("LUNGSTREAM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    assert!(
        dir.join("README.md").is_file(),
        "test data not found at {}; set LUNGSTREAM_DATA to the shared data folder",
        dir.display()
    );
    dir
}

/// Returns the `.dcm` files of the real pancreas CT series, sorted by name.
fn pancreas_series() -> Vec<PathBuf> {
    let dir = data_dir().join("ct/pancreas-ct-cb-001");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "dcm"))
        .collect();
    files.sort();
    files
}

/// A C-STORE SCP on 127.0.0.1 with an in-memory intake.
struct Scp {
    address: SocketAddr,
    bus: MemoryBus,
    store: Store,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Scp {
    async fn start() -> Scp {
        Scp::start_with(4).await
    }

    async fn start_with(max_associations: usize) -> Scp {
        let bus = MemoryBus::new(4);
        let store = Store::open("memory://").unwrap();
        let intake = Intake::new(store.clone(), bus.producer(), "cstore-test-secret", &Limits::default());
        let tenants = Tenants::new(&[Tenant {
            hospital: HOSPITAL.into(),
            tokens: vec!["north-token-0123456789".into()],
            ae_titles: vec![CALLING_AE_TITLE.into()],
        }])
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let scp = Arc::new(CStoreScp {
            intake,
            tenants: Arc::new(tenants),
            ae_title: SCP_AE_TITLE.into(),
            max_pdu: 16_384,
            max_associations,
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(cstore::serve(listener, scp, shutdown.clone()));
        Scp {
            address,
            bus,
            store,
            shutdown,
            task,
        }
    }

    /// Runs the blocking SCU on a blocking thread.
    async fn send(&self, calling_ae: &str, called_ae: &str, files: Vec<PathBuf>) -> anyhow::Result<Vec<StoreOutcome>> {
        let address = self.address.to_string();
        let calling_ae = calling_ae.to_string();
        let called_ae = called_ae.to_string();
        tokio::task::spawn_blocking(move || cstore::send_files(&address, &calling_ae, &called_ae, &files))
            .await
            .unwrap()
    }

    fn instance_events(&self) -> Vec<InstanceEvent> {
        self.bus
            .events(topics::INSTANCES)
            .iter()
            .map(|message| serde_json::from_slice(&message.payload).unwrap())
            .collect()
    }

    /// Waits until a commit event is published. The SCP commits after it has sent
    /// A-RELEASE-RP, so the SCU can return first.
    async fn wait_for_commit(&self) {
        for _ in 0..100 {
            if self.instance_events().iter().any(|e| matches!(e.body, InstanceBody::Commit { .. })) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no commit event within 5 s of the release");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the SCP stops within 10 s")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_series_stored_and_committed() {
    let scp = Scp::start().await;
    let files = pancreas_series();
    assert_eq!(files.len(), 134);

    let outcomes = scp.send(CALLING_AE_TITLE, SCP_AE_TITLE, files.clone()).await.unwrap();
    assert_eq!(outcomes.len(), files.len());
    for (outcome, file) in outcomes.iter().zip(&files) {
        assert_eq!(&outcome.file, file);
        assert_eq!(outcome.status, status::SUCCESS, "{outcome:?}");
        assert_eq!(outcome.error_comment, None);
    }

    let keys = scp.store.list("instances/").await.unwrap();
    assert_eq!(keys.len(), 134);
    assert!(keys.iter().all(|key| key.starts_with(&format!("instances/{HOSPITAL}/"))), "{keys:?}");

    scp.wait_for_commit().await;
    let events = scp.instance_events();
    let instances: Vec<&InstanceEvent> = events.iter().filter(|e| matches!(e.body, InstanceBody::Instance(_))).collect();
    let commits: Vec<&InstanceEvent> = events.iter().filter(|e| matches!(e.body, InstanceBody::Commit { .. })).collect();
    assert_eq!(instances.len(), 134);
    assert_eq!(commits.len(), 1);
    for event in &instances {
        let InstanceBody::Instance(instance) = &event.body else { unreachable!() };
        assert_eq!(instance.source, IngestSource::CStore);
        assert_eq!(event.hospital, HOSPITAL);
    }
    let commit = commits[0];
    assert_eq!(
        commit.body,
        InstanceBody::Commit {
            trigger: CommitTrigger::AssociationReleased
        }
    );
    assert_eq!(commit.series_uid, instances[0].series_uid);
    assert_eq!(commit.study_uid, instances[0].study_uid);

    // Events of one series share a key, so they are in one partition, in order.
    let messages = scp.bus.events(topics::INSTANCES);
    let series_key = commit.series_uid.as_bytes();
    let same_series: Vec<_> = messages.iter().filter(|m| m.key.as_deref() == Some(series_key)).collect();
    assert_eq!(same_series.len(), 135);
    let last: InstanceEvent = serde_json::from_slice(&same_series.last().unwrap().payload).unwrap();
    assert!(matches!(last.body, InstanceBody::Commit { .. }), "the commit is not the last event of its series");

    let json: serde_json::Value = serde_json::from_slice(&same_series.last().unwrap().payload).unwrap();
    assert_eq!(json["kind"], "commit");
    assert_eq!(json["trigger"], "association_released");

    scp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_calling_title_is_rejected() {
    let scp = Scp::start().await;
    let files = pancreas_series()[..2].to_vec();

    let error = scp.send("STRANGER", SCP_AE_TITLE, files).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("calling AE title not recognized"), "{message}");

    assert!(scp.store.list("instances/").await.unwrap().is_empty());
    assert!(scp.bus.events(topics::INSTANCES).is_empty());
    scp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_called_title_is_rejected() {
    let scp = Scp::start().await;
    let files = pancreas_series()[..1].to_vec();

    let error = scp.send(CALLING_AE_TITLE, "ELSEWHERE", files).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("called AE title not recognized"), "{message}");

    assert!(scp.store.list("instances/").await.unwrap().is_empty());
    scp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ct_file_gets_failure_status() {
    let scp = Scp::start().await;
    let mr_file = data_dir().join("dicom-edge/pydicom-test-files/MR_small.dcm");
    let mut files = pancreas_series()[..3].to_vec();
    files.insert(1, mr_file.clone());

    let outcomes = scp.send(CALLING_AE_TITLE, SCP_AE_TITLE, files.clone()).await.unwrap();
    assert_eq!(outcomes.len(), 4);
    for outcome in outcomes.iter().filter(|o| o.file != mr_file) {
        assert_eq!(outcome.status, status::SUCCESS, "{outcome:?}");
    }
    let mr_outcome = &outcomes[1];
    assert_eq!(mr_outcome.file, mr_file);
    assert_eq!(mr_outcome.status, status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "{mr_outcome:?}");
    let comment = mr_outcome.error_comment.as_deref().unwrap_or_default();
    assert!(comment.starts_with("not_ct:"), "{comment}");
    assert!(comment.len() <= 64, "{comment}");

    let keys = scp.store.list("instances/").await.unwrap();
    assert_eq!(keys.len(), 3);
    scp.wait_for_commit().await;
    let events = scp.instance_events();
    assert_eq!(events.iter().filter(|e| matches!(e.body, InstanceBody::Instance(_))).count(), 3);
    scp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_ct_files_are_stored() {
    let scp = Scp::start().await;
    let wg04 = data_dir().join("dicom-edge/nema-and-dcmqi/WG04");
    // Four distinct instances in RLE, JPEG-LS lossless, JPEG 2000 lossless and JPEG
    // lossless SV1.
    let files: Vec<PathBuf> = ["RLE/CT1_RLE", "JLSL/CT2_JLSL", "J2KR/CT1_J2KR", "JPLL/CT2_JPLL"]
        .iter()
        .map(|name| wg04.join(name))
        .collect();

    let outcomes = scp.send(CALLING_AE_TITLE, SCP_AE_TITLE, files).await.unwrap();
    for outcome in &outcomes {
        assert_eq!(outcome.status, status::SUCCESS, "{outcome:?}");
    }
    assert_eq!(scp.store.list("instances/").await.unwrap().len(), 4);
    scp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_and_unsent_files_fail() {
    let scp = Scp::start().await;
    let images = data_dir().join("dicom-edge/cornerstone-test-images/testImages");
    // One SOP Instance UID in three encodings: the second has other bytes, and the SCP
    // does not accept the third's transfer syntax (lossy JPEG baseline).
    let files = vec![
        images.join("CTImage.dcm"),
        images.join("CTImage.dcm_LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1.dcm"),
        images.join("CTImage.dcm_JPEGProcess1TransferSyntax_1.2.840.10008.1.2.4.50.dcm"),
    ];

    let outcomes = scp.send(CALLING_AE_TITLE, SCP_AE_TITLE, files).await.unwrap();
    assert_eq!(outcomes[0].status, status::SUCCESS, "{:?}", outcomes[0]);

    assert_eq!(outcomes[1].status, status::CONFLICTING_INSTANCE, "{:?}", outcomes[1]);
    let comment = outcomes[1].error_comment.as_deref().unwrap_or_default();
    assert!(comment.starts_with("conflicting_instance:"), "{comment}");

    assert_eq!(outcomes[2].status, status::SOP_CLASS_NOT_SUPPORTED, "{:?}", outcomes[2]);
    let comment = outcomes[2].error_comment.as_deref().unwrap_or_default();
    assert!(comment.starts_with("not sent:"), "{comment}");

    assert_eq!(scp.store.list("instances/").await.unwrap().len(), 1);
    scp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_instances_succeed_as_duplicates() {
    let scp = Scp::start().await;
    let files = pancreas_series()[..2].to_vec();

    for _ in 0..2 {
        let outcomes = scp.send(CALLING_AE_TITLE, SCP_AE_TITLE, files.clone()).await.unwrap();
        assert!(outcomes.iter().all(|o| o.status == status::SUCCESS), "{outcomes:?}");
    }
    assert_eq!(scp.store.list("instances/").await.unwrap().len(), 2);
    scp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_answers_success() {
    let scp = Scp::start().await;
    let address = scp.address.to_string();
    let code = tokio::task::spawn_blocking(move || cstore::echo(&address, CALLING_AE_TITLE, SCP_AE_TITLE))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, status::SUCCESS);
    assert!(scp.bus.events(topics::INSTANCES).is_empty(), "an echo alone commits nothing");
    scp.stop().await;
}

/// Sends the first pancreas slice as one C-STORE-RQ, waits for its response, then aborts
/// the association instead of releasing it. Returns the response status.
fn store_one_then_abort(address: &str) -> u16 {
    let file = pancreas_series().remove(0);
    let bytes = std::fs::read(&file).unwrap();
    // Preamble, DICM, then (0002,0000) UL: tag, VR, 2-byte length, 4-byte value.
    assert_eq!(&bytes[128..136], b"DICM\x02\x00\x00\x00");
    let group_length = u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
    let data_set = &bytes[144 + group_length..];
    let object = dicom_object::open_file(&file).unwrap();
    assert_eq!(object.meta().transfer_syntax().trim_end_matches('\0'), uids::IMPLICIT_VR_LITTLE_ENDIAN);
    let sop_instance_uid = object.meta().media_storage_sop_instance_uid().trim_end_matches('\0').to_string();

    let mut association = ClientAssociationOptions::new()
        .calling_ae_title(CALLING_AE_TITLE)
        .called_ae_title(SCP_AE_TITLE)
        .with_presentation_context(uids::CT_IMAGE_STORAGE, vec![uids::IMPLICIT_VR_LITTLE_ENDIAN])
        .establish(address)
        .unwrap();
    let context_id = association.presentation_contexts()[0].id;

    let implicit_le = AdapterFreeTransferSyntax::new(uids::IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", Endianness::Little, false, Codec::None).erased();
    let command = InMemDicomObject::command_from_element_iter([
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uids::CT_IMAGE_STORAGE)),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(0x0001u16)),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(7u16)),
        DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(0u16)),
        DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(0u16)),
        DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop_instance_uid.as_str())),
    ]);
    let mut command_bytes = Vec::new();
    command.write_dataset_with_ts(&mut command_bytes, &implicit_le).unwrap();
    association
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command_bytes,
            }],
        })
        .unwrap();
    let mut writer = association.send_pdata(context_id);
    writer.write_all(data_set).unwrap();
    writer.finish().unwrap();

    let Pdu::PData { data } = association.receive().unwrap() else {
        panic!("expected a C-STORE-RSP");
    };
    assert!(data[0].is_last);
    assert_eq!(data[0].value_type, PDataValueType::Command);
    let response = InMemDicomObject::read_dataset_with_ts(data[0].data.as_slice(), &implicit_le).unwrap();
    let code = response.element(tags::STATUS).unwrap().to_int::<u16>().unwrap();

    association.abort().unwrap();
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_association_commits_nothing() {
    let scp = Scp::start().await;
    let address = scp.address.to_string();
    let code = tokio::task::spawn_blocking(move || store_one_then_abort(&address)).await.unwrap();
    assert_eq!(code, status::SUCCESS);

    // Shutdown waits for the association in flight, so its end has been handled after it.
    let bus = scp.bus.clone();
    let store = scp.store.clone();
    scp.stop().await;
    assert_eq!(store.list("instances/").await.unwrap().len(), 1);
    let events = bus.events(topics::INSTANCES);
    assert_eq!(events.len(), 1);
    let event: InstanceEvent = serde_json::from_slice(&events[0].payload).unwrap();
    assert!(matches!(event.body, InstanceBody::Instance(_)), "an aborted association published a commit");
}

#[test]
fn non_dicom_file_fails_before_connecting() {
    let readme = data_dir().join("README.md");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();

    let error = cstore::send_files(&address, CALLING_AE_TITLE, SCP_AE_TITLE, &[readme]).unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("README.md"), "{message}");
    assert!(message.contains("not a DICOM Part 10 file"), "{message}");

    listener.set_nonblocking(true).unwrap();
    let connection = listener.accept();
    assert!(connection.is_err(), "send_files connected although a file is not DICOM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stow_then_cstore_is_duplicate() {
    let scp = Scp::start().await;
    let file = pancreas_series()[5].clone();
    // The same instance, first as the original file (as STOW-RS stores it) ...
    let stow = Intake::new(scp.store.clone(), scp.bus.producer(), "cstore-test-secret", &Limits::default());
    let bytes = bytes::Bytes::from(std::fs::read(&file).unwrap());
    let first = stow.accept(HOSPITAL, bytes, IngestSource::StowRs, "part 1").await.unwrap();
    assert!(!first.duplicate);
    // ... then by C-STORE, whose file meta group the SCP rebuilds.
    let outcomes = scp.send(CALLING_AE_TITLE, SCP_AE_TITLE, vec![file]).await.unwrap();
    assert_eq!(outcomes[0].status, 0, "{:?}", outcomes[0].error_comment);
    let hashes: Vec<String> = scp
        .instance_events()
        .into_iter()
        .filter_map(|e| match e.body {
            InstanceBody::Instance(stored) => Some(stored.sha256),
            InstanceBody::Commit { .. } => None,
        })
        .collect();
    assert_eq!(hashes.len(), 2);
    assert_eq!(hashes[0], hashes[1], "both events name the stored file");
    scp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_associations_take_turns() {
    let scp = Scp::start_with(1).await;
    let files: Vec<PathBuf> = pancreas_series().into_iter().take(6).collect();
    let (first, second) = files.split_at(3);
    let (a, b) = tokio::join!(
        scp.send(CALLING_AE_TITLE, SCP_AE_TITLE, first.to_vec()),
        scp.send(CALLING_AE_TITLE, SCP_AE_TITLE, second.to_vec())
    );
    let statuses: Vec<u16> = a.unwrap().iter().chain(b.unwrap().iter()).map(|o| o.status).collect();
    assert_eq!(statuses, vec![0; 6]);
    assert_eq!(scp.store.list("instances").await.unwrap().len(), 6);
    scp.stop().await;
}
