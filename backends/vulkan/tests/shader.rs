//! The compute-shader consumer against the CPU's checksum, on whatever
//! Vulkan device is here (lavapipe in CI): exact results for many lengths,
//! skipped and rejected entries, stale and torn slots, and device errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuring_core::checksum::fmix64;
use gpuring_core::io_queue::{Completion, EntryKind, Producer, Released, CONSUMED, REJECTED, SKIPPED};
use gpuring_core::{slot_checksum, SlotGeometry, StagingMemory, PAGE_SIZE};
use gpuring_vulkan::{Context, VulkanConsumer, VulkanError, VulkanStaging};

/// The device, or `None` (with the reason printed) where there is no Vulkan;
/// under CI=true a missing device fails the test instead.
fn context() -> Option<Arc<Context>> {
    match Context::new(None) {
        Ok(ctx) => Some(Arc::new(ctx)),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but Vulkan is not usable here: {e}")
        }
        Err(e) => {
            eprintln!("skipping: Vulkan is not usable here: {e}");
            None
        }
    }
}

/// Deterministic bytes that differ for every seed and position.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u64).map(|i| fmix64((seed as u64) << 40 ^ i) as u8).collect()
}

/// Write `bytes` at the start of `slot`.
fn fill(staging: &VulkanStaging, slot: u32, bytes: &[u8]) {
    assert!(bytes.len() <= staging.geometry().slot_size());
    // SAFETY: in range (asserted); the tests write a slot only while no entry
    // for it is published and unreleased, so the shader does not read it.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), staging.slot_ptr(slot).as_ptr(), bytes.len()) };
}

/// The first `len` bytes of `slot`.
fn contents(staging: &VulkanStaging, slot: u32, len: usize) -> Vec<u8> {
    assert!(len <= staging.geometry().slot_size());
    // SAFETY: in range (asserted); read while no entry for the slot is in use.
    unsafe { std::slice::from_raw_parts(staging.slot_ptr(slot).as_ptr(), len) }.to_vec()
}

fn completion(slot: u32, bytes: u64, status: i32) -> Completion {
    Completion { slot, status, kind: EntryKind::File, bytes, offset: 0, tag: slot as u64 }
}

/// Publish `items`, wait until all are released, return the releases.
fn publish_and_wait(staging: &VulkanStaging, producer: &mut Producer, items: &[Completion]) -> Vec<Released> {
    let q = staging.queue();
    assert_eq!(producer.publish_batch(&q, items), items.len());
    let mut released = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while released.len() < items.len() {
        producer.poll_released(&q, |r| released.push(r)).unwrap();
        assert_eq!(q.consumer_failed(), 0, "the shader failed the queue");
        assert!(Instant::now() < deadline, "the shader released {} of {}", released.len(), items.len());
        std::thread::sleep(Duration::from_micros(200));
    }
    released
}

#[test]
fn shader_checksums_equal_the_cpu_for_every_length() {
    let Some(ctx) = context() else { return };
    let slot_size = 64 << 10;
    let geometry = SlotGeometry::new(8, slot_size).unwrap();
    let staging = Arc::new(VulkanStaging::on(ctx, geometry, 8).unwrap());
    let consumer = VulkanConsumer::start(staging.clone()).unwrap();
    let mut producer = staging.take_producer().unwrap();
    // Lengths around words, workgroup strides (256 words = 1 KiB) and the
    // slot; stale bytes follow every short length, so a shader that read
    // past `bytes` would give another checksum.
    let lengths = [0, 1, 2, 3, 4, 5, 7, 1023, 1024, 1025, 4096, 65_533, slot_size - 1, slot_size];
    for (round, batch) in lengths.chunks(8).enumerate() {
        let mut items = Vec::new();
        let mut want = Vec::new();
        for (slot, &len) in batch.iter().enumerate() {
            let bytes = pattern(slot_size, round as u32 * 100 + slot as u32);
            fill(&staging, slot as u32, &bytes);
            want.push(slot_checksum(&bytes[..len]));
            items.push(completion(slot as u32, len as u64, 0));
        }
        let got = publish_and_wait(&staging, &mut producer, &items);
        for ((r, want), len) in got.iter().zip(want).zip(batch) {
            assert_eq!((r.consumer_status, r.result), (CONSUMED, want), "{len} bytes");
        }
    }
    // Many rounds through a small queue: positions wrap the 8 entries.
    for round in 0..40u32 {
        let len = PAGE_SIZE * (round as usize % 16 + 1) - round as usize;
        let slot = round % 8;
        let bytes = pattern(len, round);
        fill(&staging, slot, &bytes);
        let got = publish_and_wait(&staging, &mut producer, &[completion(slot, len as u64, 0)]);
        assert_eq!(got[0].result, slot_checksum(&bytes), "round {round}");
    }
    producer.close(&staging.queue());
    let stats = consumer.join().unwrap();
    assert_eq!(stats.entries, lengths.len() as u64 + 40);
    assert_eq!(stats.skipped, 0);
}

#[test]
fn failed_reads_are_skipped_and_stale_or_torn_slots_change_the_checksum() {
    let Some(ctx) = context() else { return };
    let slot_size = 16 << 10;
    let staging = Arc::new(VulkanStaging::on(ctx, SlotGeometry::new(4, slot_size).unwrap(), 4).unwrap());
    let consumer = VulkanConsumer::start(staging.clone()).unwrap();
    let mut producer = staging.take_producer().unwrap();
    let fresh = pattern(slot_size, 1);
    let want = slot_checksum(&fresh);

    // Slot 0 holds the fresh bytes; slot 1 still holds an older read's bytes
    // (stale); slot 2 has one 512-byte block from the old read (torn);
    // slot 3 has its two halves swapped (moved blocks). The entry with an
    // errno status is skipped.
    let stale = pattern(slot_size, 2);
    let mut torn = fresh.clone();
    torn[4096..4608].copy_from_slice(&stale[4096..4608]);
    let moved = [&fresh[slot_size / 2..], &fresh[..slot_size / 2]].concat();
    for (slot, bytes) in [&fresh, &stale, &torn, &moved].into_iter().enumerate() {
        fill(&staging, slot as u32, bytes);
    }
    let items: Vec<_> = (0..4).map(|s| completion(s, slot_size as u64, 0)).collect();
    let got = publish_and_wait(&staging, &mut producer, &items);
    assert_eq!(got[0].result, want);
    for r in &got[1..] {
        assert_eq!(r.consumer_status, CONSUMED);
        assert_ne!(r.result, want, "slot {} passed for the fresh bytes", r.completion.slot);
        assert_eq!(r.result, slot_checksum(&contents(&staging, r.completion.slot, slot_size)), "but equals the CPU's checksum of what is there");
    }
    let got = publish_and_wait(&staging, &mut producer, &[completion(0, slot_size as u64, -5), completion(1, 10, 0)]);
    assert_eq!((got[0].consumer_status, got[0].result), (SKIPPED, 0));
    assert_eq!(got[1].result, slot_checksum(&stale[..10]));
    producer.close(&staging.queue());
    let stats = consumer.join().unwrap();
    assert_eq!((stats.entries, stats.skipped, stats.bytes), (6, 1, 4 * slot_size as u64 + 10));
}

#[test]
fn a_bad_entry_is_rejected_and_nothing_after_it_released() {
    let Some(ctx) = context() else { return };
    let staging = Arc::new(VulkanStaging::on(ctx, SlotGeometry::new(4, 8192).unwrap(), 4).unwrap());
    let consumer = VulkanConsumer::start(staging.clone()).unwrap();
    let q = staging.queue();
    let mut producer = staging.take_producer().unwrap();
    // Slot 9 does not exist; the entry before it is fine but in the same batch.
    assert_eq!(producer.publish_batch(&q, &[completion(0, 100, 0), completion(9, 100, 0)]), 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while q.consumer_failed() == 0 {
        assert!(Instant::now() < deadline, "the consumer never failed");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(producer.poll_released(&q, |_| panic!("a batch with a rejected entry released something")).unwrap(), 0);
    assert_eq!(q.entry(1).consumer_status(), REJECTED);
    producer.close(&q);
    let e = consumer.join().unwrap_err().to_string();
    assert!(e.contains("rejected io_queue entry 1: slot 9 with 100 bytes, but there are 4 slots of 8192 bytes"), "{e}");
    assert!(e.contains("Fix:"), "{e}");
}

#[test]
fn device_errors_name_the_device_and_a_fix() {
    let Some(ctx) = context() else { return };
    let e = VulkanStaging::new(Some("no such device"), SlotGeometry::new(1, 4096).unwrap(), 1).unwrap_err().to_string();
    assert!(e.contains("no Vulkan device matches `no such device` (devices: 0: "), "{e}");
    // One slot larger than the device's largest storage buffer.
    let max = ctx.info().max_storage_buffer_range as usize;
    let too_big = SlotGeometry::new(1, max.next_multiple_of(PAGE_SIZE) + PAGE_SIZE).unwrap();
    let e = VulkanStaging::on(ctx, too_big, 1).unwrap_err();
    assert!(matches!(e, VulkanError::TooLarge { what: "slots", .. }), "{e}");
    assert!(e.to_string().contains("Fix: ask for a smaller ring"), "{e}");
}

#[test]
fn dropping_a_running_consumer_stops_it() {
    let Some(ctx) = context() else { return };
    let staging = Arc::new(VulkanStaging::on(ctx, SlotGeometry::new(2, 4096).unwrap(), 2).unwrap());
    let consumer = VulkanConsumer::start(staging.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let started = Instant::now();
    drop(consumer);
    assert!(started.elapsed() < Duration::from_secs(10), "drop waited {:?}", started.elapsed());
}

/// A user's shader: each entry's result is its slot's first word plus its
/// byte count, it counts entries in its output, and it rejects an entry
/// whose tag is 13.
const USER: &str = r#"
@compute @workgroup_size(1)
fn mine(@builtin(workgroup_id) group: vec3<u32>) {
    let position = params.first + group.x;
    let slot = gpuring_load(position, GPURING_E_SLOT);
    var verdict = GPURING_CONSUMED;
    if gpuring_load(position, GPURING_E_TAG) == 13u {
        verdict = GPURING_REJECTED;
    }
    gpuring_store(position, GPURING_E_RESULT, slots[slot * (params.slot_bytes / 4u)] + gpuring_load(position, GPURING_E_BYTES));
    gpuring_store(position, GPURING_E_CONSUMER_STATUS, verdict);
    atomicAdd(&output[0], 1u);
}
"#;

#[test]
fn a_users_shader_runs_on_the_staging_and_its_output_and_rejections_come_back() {
    let Some(ctx) = context() else { return };
    let shader = gpuring_vulkan::Shader::wgsl(USER, "mine").unwrap().with_output(4);
    let staging = Arc::new(VulkanStaging::on(ctx.clone(), SlotGeometry::new(4, 8192).unwrap(), 4).unwrap());
    let consumer = VulkanConsumer::with_shader(staging.clone(), &shader).unwrap();
    assert!(VulkanConsumer::start(staging.clone()).is_err(), "one consumer per staging region");
    let mut producer = staging.take_producer().unwrap();
    for slot in 0..4u32 {
        fill(&staging, slot, &(1000 * slot + 7).to_le_bytes());
    }
    let items: Vec<Completion> = (0..4).map(|slot| completion(slot, 100 + slot as u64, 0)).collect();
    let released = publish_and_wait(&staging, &mut producer, &items);
    for (r, slot) in released.iter().zip(0..4u32) {
        assert_eq!((r.consumer_status, r.result), (CONSUMED, (1000 * slot + 7 + 100 + slot) as u64), "slot {slot}");
    }
    producer.close(&staging.queue());
    let (stats, output) = consumer.finish().unwrap();
    assert_eq!(stats.entries, 4);
    assert_eq!(u32::from_le_bytes(output[..4].try_into().unwrap()), 4, "the output buffer comes back");

    // A rejection fails the queue and names the entry.
    let staging = Arc::new(VulkanStaging::on(ctx, SlotGeometry::new(4, 8192).unwrap(), 4).unwrap());
    let consumer = VulkanConsumer::with_shader(staging.clone(), &shader).unwrap();
    let q = staging.queue();
    let mut producer = staging.take_producer().unwrap();
    let mut bad = completion(1, 10, 0);
    bad.tag = 13;
    assert_eq!(producer.publish_batch(&q, &[completion(0, 10, 0), bad]), 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while q.consumer_failed() == 0 {
        assert!(Instant::now() < deadline, "the consumer never failed");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(producer.poll_released(&q, |_| panic!("a batch with a rejected entry released something")).unwrap(), 0);
    producer.close(&q);
    let e = consumer.join().unwrap_err().to_string();
    assert!(e.contains("rejected io_queue entry 1: the consumer marked it rejected"), "{e}");
}

/// A Vulkan instance and device of the test's own (as an application that
/// already uses Vulkan has), made with ash: the first device with
/// `VK_EXT_external_memory_host` and a compute queue, with that extension
/// enabled and two queues of the family when it has two (one for gpuring's
/// consumer, one for the application). Destroyed on drop, after gpuring's
/// objects, which never destroy it.
struct Own {
    _entry: ash::Entry,
    instance: ash::Instance,
    physical: ash::vk::PhysicalDevice,
    device: ash::Device,
    family: u32,
}

impl Own {
    fn new() -> Option<Self> {
        use ash::vk;
        // SAFETY: loading the system's Vulkan loader.
        let entry = unsafe { ash::Entry::load() }.ok()?;
        let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_1);
        // SAFETY: valid create info.
        let instance = unsafe { entry.create_instance(&vk::InstanceCreateInfo::default().application_info(&app), None) }.ok()?;
        // SAFETY: a live instance.
        let devices = unsafe { instance.enumerate_physical_devices() }.ok()?;
        let found = devices.into_iter().find_map(|pd| {
            // SAFETY: `pd` is the live instance's.
            let extensions = unsafe { instance.enumerate_device_extension_properties(pd) }.ok()?;
            extensions.iter().any(|e| e.extension_name_as_c_str() == Ok(ash::ext::external_memory_host::NAME)).then_some(())?;
            // SAFETY: as above.
            let families = unsafe { instance.get_physical_device_queue_family_properties(pd) };
            let family = families.iter().position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))?;
            Some((pd, family as u32, families[family].queue_count.min(2)))
        });
        let Some((physical, family, queues)) = found else {
            // SAFETY: nothing was made from the instance.
            unsafe { instance.destroy_instance(None) };
            return None;
        };
        let priorities = [1.0f32; 2];
        let queue_info = [vk::DeviceQueueCreateInfo::default().queue_family_index(family).queue_priorities(&priorities[..queues as usize])];
        let extensions = [ash::ext::external_memory_host::NAME.as_ptr()];
        let info = vk::DeviceCreateInfo::default().queue_create_infos(&queue_info).enabled_extension_names(&extensions);
        // SAFETY: `physical` is the instance's; the extension exists on it.
        let device = unsafe { instance.create_device(physical, &info, None) }.ok()?;
        Some(Self { _entry: entry, instance, physical, device, family })
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        // SAFETY: gpuring's objects on the device are gone (the test drops
        // them first); the device, then the instance, are destroyed once.
        unsafe {
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

#[test]
fn a_users_shader_runs_on_the_users_own_vulkan_device() {
    let Some(own) = Own::new() else {
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "CI=true but no Vulkan device with VK_EXT_external_memory_host");
        eprintln!("skipping: no Vulkan device with VK_EXT_external_memory_host");
        return;
    };
    // A queue family that does not exist is refused, naming it.
    // SAFETY: the device was made from `physical` of `instance`, with the
    // extension, and outlives every gpuring object below.
    let e = unsafe { Context::from_device(&own.instance, own.physical, &own.device, 99, 0) }.unwrap_err().to_string();
    assert!(e.contains("queue 0 of family 99 with compute"), "{e}");
    {
        // SAFETY: as above; the queue is gpuring's alone while the consumer runs.
        let ctx = Arc::new(unsafe { Context::from_device(&own.instance, own.physical, &own.device, own.family, 0) }.unwrap());
        assert!(!ctx.owns_device());
        assert_eq!(ctx.device().handle(), own.device.handle(), "gpuring works on the caller's device");
        let shader = gpuring_vulkan::Shader::wgsl(USER, "mine").unwrap().with_output(4);
        let staging = Arc::new(VulkanStaging::on(ctx, SlotGeometry::new(4, 8192).unwrap(), 4).unwrap());
        let consumer = VulkanConsumer::with_shader(staging.clone(), &shader).unwrap();
        let mut producer = staging.take_producer().unwrap();
        for slot in 0..4u32 {
            fill(&staging, slot, &(2000 * slot + 3).to_le_bytes());
        }
        let items: Vec<Completion> = (0..4).map(|slot| completion(slot, 10 + slot as u64, 0)).collect();
        for round in 0..3 {
            let released = publish_and_wait(&staging, &mut producer, &items);
            for (r, slot) in released.iter().zip(0..4u32) {
                assert_eq!((r.consumer_status, r.result), (CONSUMED, (2000 * slot + 3 + 10 + slot) as u64), "round {round}, slot {slot}");
            }
        }
        producer.close(&staging.queue());
        let (stats, output) = consumer.finish().unwrap();
        assert_eq!(stats.entries, 12);
        assert_eq!(u32::from_le_bytes(output[..4].try_into().unwrap()), 12);
    }
    // gpuring's objects are gone and left the device alive: it still works.
    // SAFETY: the caller's live device.
    unsafe { own.device.device_wait_idle() }.expect("the caller's device outlives gpuring's objects on it");
}
