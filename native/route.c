/* Route fast path: tables, the DVR rewrite, the punt queue and the I/O thread. See route.h. */
#define _GNU_SOURCE
#include "route.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef __linux__
#include <linux/filter.h>
#endif

#include "pktio.h"
#include "table.h"

#define ETH_HDR 14
#define VLAN_HDR 4
#define IP_HDR 20
#define HIT_QUEUE 1024

static const char *const COUNTER_NAMES[ROUTE_C_COUNT] = {
    "rx_frames", "forwarded", "punted", "drop_queue_full", "drop_ttl", "drop_truncated",
    "drop_not_ipv4", "drop_bad_header", "drop_no_tag", "drop_unknown_router", "drop_no_segment",
    "drop_too_big", "hits_dropped", "tx_errors",
};

struct router {
    uint8_t dvr_mac[6];
};

struct segment {
    uint16_t vlan;
};

struct dest {
    uint8_t dst_mac[6];
    uint8_t src_mac[6];
    uint32_t vni;
    uint64_t last_hit_ns; /* when its last hit was reported (0: never) */
};

struct punt {
    uint32_t len;
    uint8_t data[ROUTE_MAX_FRAME];
};

struct hit {
    uint32_t tag, ip;
};

struct aca_route_engine {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct aca_table routers, segments, dests;
    uint64_t counters[ROUTE_C_COUNT];
    uint64_t hit_interval_ns;
    int closed;
    /* Rings: head = next to read, n = how many are held. */
    struct punt *punts;
    uint32_t punt_cap, punt_head, punt_n;
    struct hit hits[HIT_QUEUE];
    uint32_t hit_head, hit_n;
    struct pktio io;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

aca_route_engine *aca_route_engine_new(uint32_t queue_cap)
{
    if (queue_cap == 0 || queue_cap > ROUTE_MAX_QUEUE)
        return NULL;
    aca_route_engine *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    e->punts = calloc(queue_cap, sizeof(*e->punts));
    pthread_condattr_t attr;
    int ok = e->punts != NULL && pthread_condattr_init(&attr) == 0;
    if (ok) {
        ok = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 && pthread_cond_init(&e->cond, &attr) == 0;
        pthread_condattr_destroy(&attr);
    }
    if (ok && pthread_mutex_init(&e->lock, NULL) != 0) {
        pthread_cond_destroy(&e->cond);
        ok = 0;
    }
    if (!ok) {
        free(e->punts);
        free(e);
        return NULL;
    }
    e->punt_cap = queue_cap;
    e->hit_interval_ns = 1000000000ULL;
    pktio_init(&e->io);
    return e;
}

static void clear_locked(aca_route_engine *e)
{
    aca_tbl_clear(&e->routers);
    aca_tbl_clear(&e->segments);
    aca_tbl_clear(&e->dests);
    memset(e->counters, 0, sizeof(e->counters));
    e->punt_head = e->punt_n = 0;
    e->hit_head = e->hit_n = 0;
    e->closed = 0;
}

void aca_route_engine_clear(aca_route_engine *e)
{
    pthread_mutex_lock(&e->lock);
    clear_locked(e);
    pthread_mutex_unlock(&e->lock);
}

void aca_route_engine_free(aca_route_engine *e)
{
    if (e == NULL)
        return;
    aca_route_io_stop(e);
    clear_locked(e);
    free(e->punts);
    pthread_cond_destroy(&e->cond);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

/* ------------------------------------------------------------------ tables */
static int put(aca_route_engine *e, struct aca_table *t, uint64_t a, uint64_t b, void *v)
{
    pthread_mutex_lock(&e->lock);
    int rc = aca_tbl_put(t, a, b, v);
    pthread_mutex_unlock(&e->lock);
    if (rc != 0)
        free(v);
    return rc;
}

static int del(aca_route_engine *e, struct aca_table *t, uint64_t a, uint64_t b)
{
    pthread_mutex_lock(&e->lock);
    int rc = aca_tbl_del(t, a, b);
    pthread_mutex_unlock(&e->lock);
    return rc;
}

int aca_route_router_set(aca_route_engine *e, uint32_t tag, const uint8_t *dvr_mac)
{
    if (dvr_mac == NULL)
        return -1;
    struct router *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -1;
    memcpy(r->dvr_mac, dvr_mac, 6);
    return put(e, &e->routers, tag, 0, r);
}

int aca_route_router_del(aca_route_engine *e, uint32_t tag) { return del(e, &e->routers, tag, 0); }

int aca_route_segment_set(aca_route_engine *e, uint32_t vni, uint16_t vlan)
{
    if (vlan == 0 || vlan > ROUTE_MAX_VLAN)
        return -1;
    struct segment *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -1;
    s->vlan = vlan;
    return put(e, &e->segments, vni, 0, s);
}

int aca_route_segment_del(aca_route_engine *e, uint32_t vni) { return del(e, &e->segments, vni, 0); }

int aca_route_dest_set(aca_route_engine *e, uint32_t tag, uint32_t ip, const uint8_t *dst_mac,
                       const uint8_t *src_mac, uint32_t vni)
{
    if (dst_mac == NULL || src_mac == NULL)
        return -1;
    struct dest *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return -1;
    memcpy(d->dst_mac, dst_mac, 6);
    memcpy(d->src_mac, src_mac, 6);
    d->vni = vni;
    return put(e, &e->dests, tag, ip, d);
}

int aca_route_dest_del(aca_route_engine *e, uint32_t tag, uint32_t ip) { return del(e, &e->dests, tag, ip); }

void aca_route_set_hit_interval(aca_route_engine *e, uint64_t ns)
{
    pthread_mutex_lock(&e->lock);
    e->hit_interval_ns = ns;
    pthread_mutex_unlock(&e->lock);
}

/* ------------------------------------------------------------------ the rewrite */
/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for one 16-bit word changing from m to m2. */
static uint16_t csum_update(uint16_t hc, uint16_t m, uint16_t m2)
{
    uint32_t sum = (uint16_t)~hc + (uint32_t)(uint16_t)~m + m2;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

struct parsed {
    uint32_t tag, vni, dst_ip;
    size_t ip_off;
};

/* 0 with ``p`` filled, or the drop counter. */
static int parse(const uint8_t *f, size_t len, struct parsed *p)
{
    if (len < ETH_HDR)
        return ROUTE_C_DROP_TRUNCATED;
    if (f[0] != ROUTE_TAG_0 || f[1] != ROUTE_TAG_1 || f[6] != ROUTE_TAG_0 || f[7] != ROUTE_TAG_1)
        return ROUTE_C_DROP_NO_TAG;
    p->vni = (uint32_t)f[3] << 16 | (uint32_t)f[4] << 8 | f[5];
    p->tag = aca_rd32(f + 8);
    if (aca_rd16(f + 12) != 0x0800)
        return ROUTE_C_DROP_NOT_IPV4;
    if (len < ETH_HDR + IP_HDR)
        return ROUTE_C_DROP_TRUNCATED;
    const uint8_t *ip = f + ETH_HDR;
    if (ip[0] >> 4 != 4)
        return ROUTE_C_DROP_NOT_IPV4;
    size_t ihl = (size_t)(ip[0] & 0x0f) * 4, total = aca_rd16(ip + 2);
    if (ihl < IP_HDR || total < ihl)
        return ROUTE_C_DROP_BAD_HEADER;
    if (ETH_HDR + ihl > len || ETH_HDR + total > len)
        return ROUTE_C_DROP_TRUNCATED;
    p->dst_ip = aca_rd32(ip + 16);
    p->ip_off = ETH_HDR;
    return 0;
}

static int enqueue_punt(aca_route_engine *e, const uint8_t *f, size_t len)
{
    if (e->punt_n == e->punt_cap) {
        e->counters[ROUTE_C_DROP_QUEUE_FULL]++;
        return ROUTE_DROP;
    }
    struct punt *slot = &e->punts[(e->punt_head + e->punt_n) % e->punt_cap];
    slot->len = (uint32_t)(len > ROUTE_MAX_FRAME ? ROUTE_MAX_FRAME : len);
    memcpy(slot->data, f, slot->len);
    e->punt_n++;
    e->counters[ROUTE_C_PUNTED]++;
    pthread_cond_broadcast(&e->cond);
    return ROUTE_PUNT;
}

static void record_hit(aca_route_engine *e, struct dest *d, uint32_t tag, uint32_t ip, uint64_t now)
{
    if (d->last_hit_ns != 0 && now - d->last_hit_ns < e->hit_interval_ns)
        return;
    d->last_hit_ns = now;
    if (e->hit_n == HIT_QUEUE) {
        e->counters[ROUTE_C_HITS_DROPPED]++;
        return;
    }
    e->hits[(e->hit_head + e->hit_n) % HIT_QUEUE] = (struct hit){tag, ip};
    e->hit_n++;
    pthread_cond_broadcast(&e->cond);
}

/* The rewrite proper; ``account`` off for the benchmark (no counters, queues or hits). */
static int rewrite_locked(aca_route_engine *e, const uint8_t *f, size_t len, uint8_t *out, size_t out_cap,
                          size_t *out_len, uint64_t now, int account)
{
    struct parsed p;
    *out_len = 0;
    if (account)
        e->counters[ROUTE_C_RX_FRAMES]++;
    int drop = parse(f, len, &p);
    if (drop == 0 && f[p.ip_off + 8] <= 1)
        drop = ROUTE_C_DROP_TTL;
    if (drop == 0 && aca_tbl_get(&e->routers, p.tag, 0) == NULL)
        drop = ROUTE_C_DROP_UNKNOWN_ROUTER;
    if (drop) {
        if (account)
            e->counters[drop]++;
        return ROUTE_DROP;
    }
    struct dest *d = aca_tbl_get(&e->dests, p.tag, p.dst_ip);
    if (d == NULL)
        return account ? enqueue_punt(e, f, len) : ROUTE_PUNT;
    struct segment *s = aca_tbl_get(&e->segments, d->vni, 0);
    drop = s == NULL ? ROUTE_C_DROP_NO_SEGMENT : (out == NULL || out_cap < len + VLAN_HDR) ? ROUTE_C_DROP_TOO_BIG : 0;
    if (drop) {
        if (account)
            e->counters[drop]++;
        return ROUTE_DROP;
    }
    /* Ethernet with an 802.1Q tag naming the destination segment, then the IP packet as sent. */
    memcpy(out, d->dst_mac, 6);
    memcpy(out + 6, d->src_mac, 6);
    aca_wr16(out + 12, 0x8100);
    aca_wr16(out + 14, s->vlan);
    memcpy(out + ETH_HDR + VLAN_HDR - 2, f + 12, len - 12);
    uint8_t *ip = out + ETH_HDR + VLAN_HDR;
    uint16_t before = aca_rd16(ip + 8); /* TTL and protocol share one checksum word */
    ip[8]--;
    aca_wr16(ip + 10, csum_update(aca_rd16(ip + 10), before, aca_rd16(ip + 8)));
    *out_len = len + VLAN_HDR;
    if (account) {
        e->counters[ROUTE_C_FORWARDED]++;
        record_hit(e, d, p.tag, p.dst_ip, now);
    }
    return ROUTE_FORWARD;
}

int aca_route_rewrite(aca_route_engine *e, const uint8_t *frame, size_t len, uint8_t *out, size_t out_cap,
                      size_t *out_len)
{
    size_t dummy;
    if (out_len == NULL)
        out_len = &dummy;
    if (frame == NULL) {
        *out_len = 0;
        return ROUTE_DROP;
    }
    uint64_t now = now_ns();
    pthread_mutex_lock(&e->lock);
    int v = rewrite_locked(e, frame, len, out, out_cap, out_len, now, 1);
    pthread_mutex_unlock(&e->lock);
    return v;
}

int aca_route_inject(aca_route_engine *e, const uint8_t *frame, size_t len)
{
    uint8_t out[ROUTE_MAX_FRAME + VLAN_HDR];
    size_t n = 0;
    int v = aca_route_rewrite(e, frame, len, out, sizeof(out), &n);
    if (v != ROUTE_FORWARD)
        return v;
    int rc = pktio_send(&e->io, out, n);
    if (rc != 0) {
        pthread_mutex_lock(&e->lock);
        e->counters[ROUTE_C_TX_ERRORS]++;
        pthread_mutex_unlock(&e->lock);
        return rc;
    }
    return v;
}

/* ------------------------------------------------------------------ events for Python */
int aca_route_next_event(aca_route_engine *e, struct aca_route_event *ev, uint8_t *buf, size_t cap,
                         int timeout_ms)
{
    memset(ev, 0, sizeof(*ev));
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&e->lock);
    while (!e->closed && e->punt_n == 0 && e->hit_n == 0) {
        if (timeout_ms <= 0 || pthread_cond_timedwait(&e->cond, &e->lock, &deadline) == ETIMEDOUT)
            break;
    }
    if (e->closed) {
        ev->kind = ROUTE_EV_CLOSED;
    } else if (e->punt_n) {
        struct punt *p = &e->punts[e->punt_head];
        ev->kind = ROUTE_EV_PUNT;
        ev->len = p->len < cap ? p->len : cap;
        if (buf != NULL)
            memcpy(buf, p->data, ev->len);
        e->punt_head = (e->punt_head + 1) % e->punt_cap;
        e->punt_n--;
    } else if (e->hit_n) {
        ev->kind = ROUTE_EV_HIT;
        ev->tag = e->hits[e->hit_head].tag;
        ev->ip = e->hits[e->hit_head].ip;
        e->hit_head = (e->hit_head + 1) % HIT_QUEUE;
        e->hit_n--;
    }
    pthread_mutex_unlock(&e->lock);
    return ev->kind;
}

void aca_route_wake(aca_route_engine *e)
{
    pthread_mutex_lock(&e->lock);
    e->closed = 1;
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
}

/* ------------------------------------------------------------------ reading */
size_t aca_route_counters(aca_route_engine *e, uint64_t *out, size_t n)
{
    pthread_mutex_lock(&e->lock);
    for (size_t i = 0; i < n && i < ROUTE_C_COUNT; i++)
        out[i] = e->counters[i];
    pthread_mutex_unlock(&e->lock);
    return ROUTE_C_COUNT;
}

const char *aca_route_counter_name(size_t i) { return i < ROUTE_C_COUNT ? COUNTER_NAMES[i] : NULL; }

void aca_route_sizes(aca_route_engine *e, uint64_t *routers, uint64_t *segments, uint64_t *dests,
                     uint64_t *queued)
{
    pthread_mutex_lock(&e->lock);
    *routers = e->routers.n;
    *segments = e->segments.n;
    *dests = e->dests.n;
    *queued = e->punt_n;
    pthread_mutex_unlock(&e->lock);
}

uint64_t aca_route_bench(aca_route_engine *e, const uint8_t *frame, size_t len, uint64_t iterations)
{
    static const unsigned BATCH = PKTIO_BATCH;
    uint8_t(*out)[ROUTE_MAX_FRAME + VLAN_HDR] = malloc(BATCH * sizeof(*out));
    if (out == NULL || frame == NULL || len > ROUTE_MAX_FRAME) {
        free(out);
        return 0;
    }
    size_t n = 0;
    uint64_t start = now_ns();
    for (uint64_t done = 0; done < iterations;) {
        pthread_mutex_lock(&e->lock);
        for (unsigned i = 0; i < BATCH && done < iterations; i++, done++) {
            if (rewrite_locked(e, frame, len, out[i], sizeof(out[i]), &n, 0, 0) != ROUTE_FORWARD) {
                pthread_mutex_unlock(&e->lock);
                free(out);
                return 0;
            }
        }
        pthread_mutex_unlock(&e->lock);
    }
    uint64_t elapsed = now_ns() - start;
    free(out);
    return elapsed ? elapsed : 1;
}

/* ------------------------------------------------------------------ I/O thread (pktio.c) */
static unsigned io_batch(void *ctx, const struct pktio_frame *rx, unsigned n, struct pktio_frame *tx)
{
    aca_route_engine *e = ctx;
    uint64_t now = now_ns();
    unsigned m = 0;
    pthread_mutex_lock(&e->lock);
    for (unsigned i = 0; i < n; i++) {
        size_t len = 0;
        if (rewrite_locked(e, rx[i].data, rx[i].len, tx[m].data, PKTIO_BUF, &len, now, 1) == ROUTE_FORWARD)
            tx[m++].len = len;
    }
    pthread_mutex_unlock(&e->lock);
    return m;
}

static void io_tx_error(void *ctx, unsigned n)
{
    aca_route_engine *e = ctx;
    pthread_mutex_lock(&e->lock);
    e->counters[ROUTE_C_TX_ERRORS] += n;
    pthread_mutex_unlock(&e->lock);
}

int aca_route_io_start(aca_route_engine *e, const char *ifname)
{
#ifdef __linux__
    /* Only IPv4 frames with the punt marker in the source (0a:cb): nothing else wakes the thread. */
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 12),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x0800, 0, 3),
        BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 6),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (ROUTE_TAG_0 << 8) | ROUTE_TAG_1, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0xffff),
        BPF_STMT(BPF_RET | BPF_K, 0),
    };
    struct sock_fprog prog = {.len = sizeof(code) / sizeof(code[0]), .filter = code};
    return pktio_start(&e->io, ifname, &prog, io_batch, io_tx_error, e);
#else
    return pktio_start(&e->io, ifname, NULL, io_batch, io_tx_error, e);
#endif
}

void aca_route_io_stop(aca_route_engine *e) { pktio_stop(&e->io); }

int aca_route_io_status(aca_route_engine *e, uint64_t *loops) { return pktio_status(&e->io, loops); }
