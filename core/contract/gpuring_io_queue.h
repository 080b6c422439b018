/*
 * gpuring io_queue contract: the completion queue that gpuring's driver (the
 * producer, on the host) fills and a consumer (your kernel or shader, or host
 * code) drains. Generated from gpuring-core; do not edit.
 *
 * Memory. One region, 64-byte aligned, that both sides see coherently (host
 * pages mapped into the device): a header of 192 bytes, then `capacity`
 * entries of 64 bytes each (`capacity` is a power of two, in the header).
 * The entry for position p starts at 192 + 64 * (p & (capacity - 1)).
 * Every field is little-endian and read and written whole (atomically);
 * 64-bit fields are two 32-bit words, low word first. The slots are a second
 * region: `slot_count` slots of `slot_size` bytes, slot s at s * slot_size.
 *
 * Positions are 32-bit counters that wrap at 2^32: compare two only through
 * their difference as a signed 32-bit number, (int)(a - b) > 0, and walk a
 * batch as first + i for i in 0 .. count, never by comparing raw values.
 *
 * Producer (gpuring), for position p: write the entry's slot, status, kind,
 * bytes, offset and tag; then store seq = p + 1 with release; then, for the
 * batch, store producer = p + 1 with release.
 *
 * Consumer (yours), for position p, starting at the header's `consumer`:
 *   1. wait until (int)(producer - p) > 0, loading producer with acquire;
 *   2. check seq == p + 1 (anything else breaks the protocol: reject it);
 *   3. if status == 0, the slot holds `bytes` valid bytes from `offset`
 *      (a byte offset in a file, or an NVMe LBA, see `kind`); read them;
 *      if status != 0 the read failed (a negative errno or an NVMe status):
 *      skip it;
 *   4. write result (yours to define; gpuring's consumers store a checksum)
 *      and consumer_status: CONSUMED, SKIPPED, or REJECTED;
 *   5. store consumer = p + 1 with release. That store hands the slot back:
 *      do not read it any more. One store may release many positions, but
 *      always in order, and `consumer` never passes `producer`.
 * Acquire and release span the host and the device: on CUDA and HIP, a
 * volatile access followed (load) or preceded (store) by
 * __threadfence_system(); in WGSL, atomicLoad/atomicStore on a storage buffer
 * with host-coherent memory, and the host reads results only after the
 * dispatch's fence (gpuring's Vulkan consumer stores `consumer` from the host
 * once the fence has signalled).
 *
 * Failure: a consumer that cannot go on stores a non-zero code in
 * consumer_failed (FAILED_REJECTED, FAILED_OUT_OF_STEP, or one of its own)
 * with release and releases nothing more; the producer stops
 * and reports it, with the entry whose consumer_status is REJECTED.
 * Finished: closed == 1 (the producer publishes nothing more) and
 * consumer == producer.
 * The *_sleeping words belong to host threads; device code never writes them.
 */
#ifndef GPURING_IO_QUEUE_H
#define GPURING_IO_QUEUE_H

/* contract and header version */
#define GPURING_VERSION 1u
/* the header's magic word */
#define GPURING_MAGIC 0x51524750u
/* header size */
#define GPURING_HEADER_BYTES 192u
/* entry size */
#define GPURING_ENTRY_BYTES 64u
/* kind: offset is a byte offset in a file */
#define GPURING_KIND_FILE 0u
/* kind: offset is an NVMe logical block address */
#define GPURING_KIND_LBA 1u

/* Byte offsets in the header. */
#define GPURING_H_MAGIC 0u /* u32 */
#define GPURING_H_VERSION 4u /* u32 */
#define GPURING_H_CAPACITY 8u /* u32 */
#define GPURING_H_ENTRY_SIZE 12u /* u32 */
#define GPURING_H_CLOSED 16u /* u32 */
#define GPURING_H_PRODUCER 64u /* u32 */
#define GPURING_H_CONSUMER_SLEEPING 68u /* u32 */
#define GPURING_H_CONSUMER 128u /* u32 */
#define GPURING_H_PRODUCER_SLEEPING 132u /* u32 */
#define GPURING_H_CONSUMER_FAILED 136u /* u32 */

/* Byte offsets in an entry. */
#define GPURING_E_SEQ 0u /* u32 */
#define GPURING_E_SLOT 4u /* u32 */
#define GPURING_E_STATUS 8u /* i32 */
#define GPURING_E_KIND 12u /* u32 */
#define GPURING_E_BYTES 16u /* u64 */
#define GPURING_E_OFFSET 24u /* u64 */
#define GPURING_E_TAG 32u /* u64 */
#define GPURING_E_RESULT 40u /* u64 */
#define GPURING_E_CONSUMER_STATUS 48u /* u32 */

/* consumer_status: the slot was consumed */
#define GPURING_CONSUMED 0u
/* consumer_status: the read had failed, the slot was not read */
#define GPURING_SKIPPED 1u
/* consumer_status: the entry broke the protocol (the consumer failed) */
#define GPURING_REJECTED 2u
/* consumer_failed: an entry was rejected (any non-zero code fails the queue) */
#define GPURING_FAILED_REJECTED 0x47520001u
/* consumer_failed: a batch did not start at the header's consumer */
#define GPURING_FAILED_OUT_OF_STEP 0x47520002u

/* Byte offset of the entry for `position` in a queue of `capacity` entries. */
#define GPURING_ENTRY_OFFSET(position, capacity) \
    (GPURING_HEADER_BYTES + (unsigned long long)((position) & ((capacity) - 1u)) * GPURING_ENTRY_BYTES)

#endif /* GPURING_IO_QUEUE_H */
