/* Open-addressing hash table shared by the native engines (DHCP responder, route fast path).
 *
 * Keys are two 64-bit words; values are owned heap objects (NULL marks an empty slot) that the
 * table frees on replace, delete and clear. Linear probing with backward-shift deletion, so no
 * tombstones. Not thread-safe: each engine guards its tables with its own lock.
 */
#ifndef ACA_TABLE_H
#define ACA_TABLE_H

#include <stddef.h>
#include <stdint.h>

struct aca_slot {
    uint64_t a, b;
    void *v;
};

struct aca_table {
    struct aca_slot *slots;
    size_t cap; /* power of two or 0 */
    size_t n;
};

void *aca_tbl_get(const struct aca_table *t, uint64_t a, uint64_t b);
/* Insert or replace (the previous value is freed); 0 or -1 (out of memory, ``v`` not taken). */
int aca_tbl_put(struct aca_table *t, uint64_t a, uint64_t b, void *v);
/* 1 if the key was there (its value freed), else 0. */
int aca_tbl_del(struct aca_table *t, uint64_t a, uint64_t b);
/* Free every value and the slots; the table is empty and reusable. */
void aca_tbl_clear(struct aca_table *t);

/* Big-endian byte helpers shared by the packet code. */
static inline uint16_t aca_rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t aca_rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void aca_wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void aca_wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

#endif
