// gpuring io_queue contract: the completion queue that gpuring's driver (the
// producer, on the host) fills and a consumer (your kernel or shader, or host
// code) drains. Generated from gpuring-core; do not edit.
//
// Memory. One region, 64-byte aligned, that both sides see coherently (host
// pages mapped into the device): a header of 192 bytes, then `capacity`
// entries of 64 bytes each (`capacity` is a power of two, in the header).
// The entry for position p starts at 192 + 64 * (p & (capacity - 1)).
// Every field is little-endian and read and written whole (atomically);
// 64-bit fields are two 32-bit words, low word first. The slots are a second
// region: `slot_count` slots of `slot_size` bytes, slot s at s * slot_size.
//
// Positions are 32-bit counters that wrap at 2^32: compare two only through
// their difference as a signed 32-bit number, (int)(a - b) > 0, and walk a
// batch as first + i for i in 0 .. count, never by comparing raw values.
//
// Producer (gpuring), for position p: write the entry's slot, status, kind,
// bytes, offset and tag; then store seq = p + 1 with release; then, for the
// batch, store producer = p + 1 with release.
//
// Consumer (yours), for position p, starting at the header's `consumer`:
//   1. wait until (int)(producer - p) > 0, loading producer with acquire;
//   2. check seq == p + 1 (anything else breaks the protocol: reject it);
//   3. if status == 0, the slot holds `bytes` valid bytes from `offset`
//      (a byte offset in a file, or an NVMe LBA, see `kind`); read them;
//      if status != 0 the read failed (a negative errno or an NVMe status):
//      skip it;
//   4. write result (yours to define; gpuring's consumers store a checksum)
//      and consumer_status: CONSUMED, SKIPPED, or REJECTED;
//   5. store consumer = p + 1 with release. That store hands the slot back:
//      do not read it any more. One store may release many positions, but
//      always in order, and `consumer` never passes `producer`.
// Acquire and release span the host and the device: on CUDA and HIP, a
// volatile access followed (load) or preceded (store) by
// __threadfence_system(); in WGSL, atomicLoad/atomicStore on a storage buffer
// with host-coherent memory, and the host reads results only after the
// dispatch's fence (gpuring's Vulkan consumer stores `consumer` from the host
// once the fence has signalled).
//
// Failure: a consumer that cannot go on stores a non-zero code in
// consumer_failed (FAILED_REJECTED, FAILED_OUT_OF_STEP, or one of its own)
// with release and releases nothing more; the producer stops
// and reports it, with the entry whose consumer_status is REJECTED.
// Finished: closed == 1 (the producer publishes nothing more) and
// consumer == producer.
// The *_sleeping words belong to host threads; device code never writes them.
//
// Bind the queue as a storage buffer of `array<atomic<u32>>`: the offsets
// below are in 32-bit words; a 64-bit field is two words, low word first.

// contract and header version
const GPURING_VERSION: u32 = 1u;
// the header's magic word
const GPURING_MAGIC: u32 = 0x51524750u;
// header size
const GPURING_HEADER_WORDS: u32 = 48u;
// entry size
const GPURING_ENTRY_WORDS: u32 = 16u;
// kind: offset is a byte offset in a file
const GPURING_KIND_FILE: u32 = 0u;
// kind: offset is an NVMe logical block address
const GPURING_KIND_LBA: u32 = 1u;

// Word indices in the header.
const GPURING_H_MAGIC: u32 = 0u;
const GPURING_H_VERSION: u32 = 1u;
const GPURING_H_CAPACITY: u32 = 2u;
const GPURING_H_ENTRY_SIZE: u32 = 3u;
const GPURING_H_CLOSED: u32 = 4u;
const GPURING_H_PRODUCER: u32 = 16u;
const GPURING_H_CONSUMER_SLEEPING: u32 = 17u;
const GPURING_H_CONSUMER: u32 = 32u;
const GPURING_H_PRODUCER_SLEEPING: u32 = 33u;
const GPURING_H_CONSUMER_FAILED: u32 = 34u;

// Word offsets in an entry.
const GPURING_E_SEQ: u32 = 0u;
const GPURING_E_SLOT: u32 = 1u;
const GPURING_E_STATUS: u32 = 2u;
const GPURING_E_KIND: u32 = 3u;
const GPURING_E_BYTES: u32 = 4u; // low word; the high word follows
const GPURING_E_OFFSET: u32 = 6u; // low word; the high word follows
const GPURING_E_TAG: u32 = 8u; // low word; the high word follows
const GPURING_E_RESULT: u32 = 10u; // low word; the high word follows
const GPURING_E_CONSUMER_STATUS: u32 = 12u;

// consumer_status: the slot was consumed
const GPURING_CONSUMED: u32 = 0u;
// consumer_status: the read had failed, the slot was not read
const GPURING_SKIPPED: u32 = 1u;
// consumer_status: the entry broke the protocol (the consumer failed)
const GPURING_REJECTED: u32 = 2u;
// consumer_failed: an entry was rejected (any non-zero code fails the queue)
const GPURING_FAILED_REJECTED: u32 = 0x47520001u;
// consumer_failed: a batch did not start at the header's consumer
const GPURING_FAILED_OUT_OF_STEP: u32 = 0x47520002u;

// The word index of `field` (a GPURING_E_* offset) in the entry for
// `position` in a queue of `capacity` entries.
fn gpuring_entry_word(position: u32, capacity: u32, field: u32) -> u32 {
    return GPURING_HEADER_WORDS + (position & (capacity - 1u)) * GPURING_ENTRY_WORDS + field;
}
