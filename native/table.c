/* See table.h. */
#include "table.h"

#include <stdlib.h>

static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t x = a * 0x9e3779b97f4a7c15ULL ^ (b + 0x632be59bd9b4e019ULL);
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 29;
    return x;
}

static struct aca_slot *find(const struct aca_table *t, uint64_t a, uint64_t b)
{
    if (t->cap == 0)
        return NULL;
    size_t mask = t->cap - 1;
    for (size_t i = mix(a, b) & mask;; i = (i + 1) & mask) {
        struct aca_slot *s = &t->slots[i];
        if (s->v == NULL)
            return NULL;
        if (s->a == a && s->b == b)
            return s;
    }
}

void *aca_tbl_get(const struct aca_table *t, uint64_t a, uint64_t b)
{
    struct aca_slot *s = find(t, a, b);
    return s ? s->v : NULL;
}

static void insert_raw(struct aca_slot *slots, size_t cap, uint64_t a, uint64_t b, void *v)
{
    size_t mask = cap - 1;
    size_t i = mix(a, b) & mask;
    while (slots[i].v != NULL)
        i = (i + 1) & mask;
    slots[i].a = a;
    slots[i].b = b;
    slots[i].v = v;
}

static int grow(struct aca_table *t)
{
    size_t cap = t->cap ? t->cap * 2 : 64;
    struct aca_slot *slots = calloc(cap, sizeof(*slots));
    if (slots == NULL)
        return -1;
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].v != NULL)
            insert_raw(slots, cap, t->slots[i].a, t->slots[i].b, t->slots[i].v);
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

int aca_tbl_put(struct aca_table *t, uint64_t a, uint64_t b, void *v)
{
    struct aca_slot *s = find(t, a, b);
    if (s != NULL) {
        free(s->v);
        s->v = v;
        return 0;
    }
    if ((t->n + 1) * 4 > t->cap * 3 && grow(t) != 0)
        return -1;
    insert_raw(t->slots, t->cap, a, b, v);
    t->n++;
    return 0;
}

int aca_tbl_del(struct aca_table *t, uint64_t a, uint64_t b)
{
    struct aca_slot *s = find(t, a, b);
    if (s == NULL)
        return 0;
    size_t mask = t->cap - 1;
    size_t hole = (size_t)(s - t->slots);
    free(s->v);
    s->v = NULL;
    t->n--;
    /* Shift later members of the probe run back so lookups never stop at the hole. */
    for (size_t j = (hole + 1) & mask; t->slots[j].v != NULL; j = (j + 1) & mask) {
        size_t home = mix(t->slots[j].a, t->slots[j].b) & mask;
        size_t dist_j = (j - home) & mask, dist_hole = (hole - home) & mask;
        if (dist_hole < dist_j) {
            t->slots[hole] = t->slots[j];
            t->slots[j].v = NULL;
            hole = j;
        }
    }
    return 1;
}

void aca_tbl_clear(struct aca_table *t)
{
    for (size_t i = 0; i < t->cap; i++)
        free(t->slots[i].v);
    free(t->slots);
    t->slots = NULL;
    t->cap = 0;
    t->n = 0;
}
