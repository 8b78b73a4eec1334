/* DHCPv4 responder engine: tables, parser, reply builder and the AF_PACKET I/O thread.
 * See dhcp.h for the contract. RFC 2131 (protocol), RFC 2132 (options), RFC 3442 (option 121).
 */
#define _GNU_SOURCE
#include "dhcp.h"

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

/* ------------------------------------------------------------------ option codes and constants */
enum {
    OPT_PAD = 0,
    OPT_HOSTNAME = 12,
    OPT_REQUESTED_IP = 50,
    OPT_LEASE_TIME = 51,
    OPT_OVERLOAD = 52,
    OPT_MSG_TYPE = 53,
    OPT_SERVER_ID = 54,
    OPT_PRL = 55,
    OPT_MESSAGE = 56,
    OPT_MAX_SIZE = 57,
    OPT_T1 = 58,
    OPT_T2 = 59,
    OPT_CLIENT_ID = 61,
    OPT_END = 255,
};

enum { DISCOVER = 1, OFFER = 2, REQUEST = 3, DECLINE = 4, ACK = 5, NAK = 6, RELEASE = 7, INFORM = 8 };

#define ETH_HDR 14
#define IP_HDR 20
#define UDP_HDR 8
#define BOOTP_FIXED 236
#define DHCP_MIN 240 /* fixed part + magic cookie */
#define DHCP_MAX_MSG 1472 /* 1500 - IP - UDP */
#define BOOTP_MIN_REPLY 300 /* old clients drop shorter BOOTP messages */
#define FLAG_BROADCAST 0x8000

static const uint8_t MAGIC[4] = {99, 130, 83, 99};

static const char *const COUNTER_NAMES[DHCP_C_COUNT] = {
    "rx_frames", "rx_discover", "rx_request", "rx_inform", "rx_release", "rx_decline",
    "tx_offer", "tx_ack", "tx_nak", "drop_not_dhcp", "drop_truncated", "drop_bad_length",
    "drop_bad_option", "drop_overlong", "drop_bad_cookie", "drop_bad_msg_type", "drop_unknown_port",
    "drop_mac_not_allowed", "drop_no_lease", "drop_other_server", "drop_rate_limited", "tx_errors",
};

/* ------------------------------------------------------------------ engine */
struct subnet {
    uint32_t server_ip;
    uint32_t lease_time;
    uint16_t opt_len;
    uint16_t off[256]; /* offset + 1 of the option's TLV in opts; 0 when absent */
    uint8_t opts[DHCP_MAX_PROFILE_OPTIONS];
};

struct lease {
    uint32_t ip;
    uint32_t handle;
    uint16_t hostname_len;
    char hostname[DHCP_MAX_HOSTNAME + 1];
};

struct port {
    uint32_t net_id;
    uint32_t n_macs;
    int ifindex;        /* replies leave directly from this interface (0: back through OVS) */
    uint8_t src_mac[6]; /* ... with this Ethernet source */
    double tokens;
    uint64_t last_ns;
    uint8_t macs[][6]; /* n_macs of them: allocated with the port */
};

struct dhcp_engine {
    pthread_mutex_t lock;
    struct aca_table subnets, leases, ports;
    uint64_t counters[DHCP_C_COUNT];
    uint32_t rate, burst;
    struct pktio io;
};

static uint64_t mac_key(const uint8_t *mac)
{
    uint64_t k = 0;
    for (int i = 0; i < 6; i++)
        k = k << 8 | mac[i];
    return k;
}

dhcp_engine *dhcp_engine_new(void)
{
    dhcp_engine *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    if (pthread_mutex_init(&e->lock, NULL) != 0) {
        free(e);
        return NULL;
    }
    e->rate = 100;
    e->burst = 200;
    pktio_init(&e->io);
    return e;
}

static void clear_locked(dhcp_engine *e)
{
    aca_tbl_clear(&e->subnets);
    aca_tbl_clear(&e->leases);
    aca_tbl_clear(&e->ports);
    memset(e->counters, 0, sizeof(e->counters));
}

void dhcp_engine_clear(dhcp_engine *e)
{
    pthread_mutex_lock(&e->lock);
    clear_locked(e);
    pthread_mutex_unlock(&e->lock);
}

void dhcp_engine_free(dhcp_engine *e)
{
    if (e == NULL)
        return;
    dhcp_io_stop(e);
    clear_locked(e);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

int dhcp_subnet_set(dhcp_engine *e, uint32_t handle, uint32_t server_ip, uint32_t lease_time,
                    const uint8_t *options, size_t options_len)
{
    if (options_len > DHCP_MAX_PROFILE_OPTIONS || (options_len && options == NULL))
        return -1;
    struct subnet *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -1;
    s->server_ip = server_ip;
    s->lease_time = lease_time;
    for (size_t i = 0; i < options_len;) {
        uint8_t code = options[i];
        if (code == OPT_PAD || code == OPT_END || i + 2 > options_len || i + 2 + options[i + 1] > options_len) {
            free(s);
            return -1;
        }
        if (s->off[code] == 0)
            s->off[code] = (uint16_t)(i + 1);
        i += 2u + options[i + 1];
    }
    if (options_len)
        memcpy(s->opts, options, options_len);
    s->opt_len = (uint16_t)options_len;
    pthread_mutex_lock(&e->lock);
    int rc = aca_tbl_put(&e->subnets, handle, 0, s);
    pthread_mutex_unlock(&e->lock);
    if (rc != 0)
        free(s);
    return rc;
}

int dhcp_subnet_del(dhcp_engine *e, uint32_t handle)
{
    pthread_mutex_lock(&e->lock);
    int rc = aca_tbl_del(&e->subnets, handle, 0);
    pthread_mutex_unlock(&e->lock);
    return rc;
}

int dhcp_lease_set(dhcp_engine *e, uint32_t net_id, const uint8_t *mac, uint32_t ip, uint32_t handle,
                   const char *hostname)
{
    if (mac == NULL)
        return -1;
    struct lease *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return -1;
    l->ip = ip;
    l->handle = handle;
    if (hostname != NULL) {
        size_t n = strnlen(hostname, DHCP_MAX_HOSTNAME + 1);
        if (n > DHCP_MAX_HOSTNAME) {
            free(l);
            return -1;
        }
        memcpy(l->hostname, hostname, n);
        l->hostname_len = (uint16_t)n;
    }
    pthread_mutex_lock(&e->lock);
    int rc = aca_tbl_put(&e->leases, net_id, mac_key(mac), l);
    pthread_mutex_unlock(&e->lock);
    if (rc != 0)
        free(l);
    return rc;
}

int dhcp_lease_del(dhcp_engine *e, uint32_t net_id, const uint8_t *mac)
{
    if (mac == NULL)
        return -1;
    pthread_mutex_lock(&e->lock);
    int rc = aca_tbl_del(&e->leases, net_id, mac_key(mac));
    pthread_mutex_unlock(&e->lock);
    return rc;
}

int dhcp_port_set(dhcp_engine *e, uint32_t ofport, uint32_t net_id, const uint8_t *macs, size_t n_macs)
{
    if (n_macs > DHCP_MAX_PORT_MACS || (n_macs && macs == NULL))
        return -1;
    struct port *p = calloc(1, sizeof(*p) + n_macs * 6);
    if (p == NULL)
        return -1;
    p->net_id = net_id;
    p->n_macs = (uint32_t)n_macs;
    if (n_macs)
        memcpy(p->macs, macs, n_macs * 6);
    pthread_mutex_lock(&e->lock);
    struct port *old = aca_tbl_get(&e->ports, ofport, 0);
    if (old != NULL) { /* keep the bucket: re-declaring a port must not refill it */
        p->tokens = old->tokens;
        p->last_ns = old->last_ns;
    } else {
        p->tokens = e->burst;
    }
    int rc = aca_tbl_put(&e->ports, ofport, 0, p);
    pthread_mutex_unlock(&e->lock);
    if (rc != 0)
        free(p);
    return rc;
}

int dhcp_port_direct(dhcp_engine *e, uint32_t ofport, int ifindex, const uint8_t *src_mac)
{
    if (ifindex < 0 || (ifindex > 0 && src_mac == NULL))
        return -1;
    pthread_mutex_lock(&e->lock);
    struct port *p = aca_tbl_get(&e->ports, ofport, 0);
    if (p != NULL) {
        p->ifindex = ifindex;
        if (ifindex)
            memcpy(p->src_mac, src_mac, 6);
    }
    pthread_mutex_unlock(&e->lock);
    return p != NULL ? 0 : -1;
}

int dhcp_port_del(dhcp_engine *e, uint32_t ofport)
{
    pthread_mutex_lock(&e->lock);
    int rc = aca_tbl_del(&e->ports, ofport, 0);
    pthread_mutex_unlock(&e->lock);
    return rc;
}

void dhcp_set_rate_limit(dhcp_engine *e, uint32_t rate, uint32_t burst)
{
    pthread_mutex_lock(&e->lock);
    e->rate = rate;
    e->burst = burst ? burst : 1;
    pthread_mutex_unlock(&e->lock);
}

size_t dhcp_counters(dhcp_engine *e, uint64_t *out, size_t n)
{
    pthread_mutex_lock(&e->lock);
    for (size_t i = 0; i < n && i < DHCP_C_COUNT; i++)
        out[i] = e->counters[i];
    pthread_mutex_unlock(&e->lock);
    return DHCP_C_COUNT;
}

const char *dhcp_counter_name(size_t i)
{
    return i < DHCP_C_COUNT ? COUNTER_NAMES[i] : NULL;
}

void dhcp_sizes(dhcp_engine *e, uint64_t *leases, uint64_t *ports, uint64_t *subnets)
{
    pthread_mutex_lock(&e->lock);
    *leases = e->leases.n;
    *ports = e->ports.n;
    *subnets = e->subnets.n;
    pthread_mutex_unlock(&e->lock);
}

/* ------------------------------------------------------------------ checksums */
static uint32_t csum_add(uint32_t sum, const uint8_t *p, size_t n)
{
    for (; n > 1; p += 2, n -= 2)
        sum += aca_rd16(p);
    if (n)
        sum += (uint32_t)p[0] << 8;
    return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* ------------------------------------------------------------------ parser */
struct request {
    uint32_t ofport;
    const uint8_t *bootp; /* start of the BOOTP message */
    size_t bootp_len;
    uint8_t msg_type;
    int has_requested, has_server_id;
    uint32_t requested_ip, server_id;
    const uint8_t *prl;
    uint8_t prl_len;
    uint16_t max_size;
};

/* Returns 0 with ``r`` filled, or the drop counter to bump. */
static int parse(const uint8_t *f, size_t len, struct request *r)
{
    memset(r, 0, sizeof(*r));
    if (len < ETH_HDR)
        return DHCP_C_DROP_TRUNCATED;
    if (len > DHCP_MAX_FRAME + 4)
        return DHCP_C_DROP_OVERLONG;
    if (f[6] != DHCP_TAG_0 || f[7] != DHCP_TAG_1)
        return DHCP_C_DROP_UNKNOWN_PORT;
    r->ofport = aca_rd32(f + 8);
    size_t off = 12;
    uint16_t type = aca_rd16(f + off);
    if (type == 0x8100) { /* an in-band 802.1Q tag is skipped; nothing here relies on it */
        if (len < ETH_HDR + 4)
            return DHCP_C_DROP_TRUNCATED;
        off += 4;
        type = aca_rd16(f + off);
    }
    off += 2;
    if (type != 0x0800)
        return DHCP_C_DROP_NOT_DHCP;
    const uint8_t *ip = f + off;
    size_t avail = len - off;
    if (avail < IP_HDR)
        return DHCP_C_DROP_TRUNCATED;
    size_t ihl = (size_t)(ip[0] & 0x0f) * 4;
    if (ip[0] >> 4 != 4 || ihl < IP_HDR)
        return DHCP_C_DROP_BAD_LENGTH;
    size_t total = aca_rd16(ip + 2);
    if (total < ihl + UDP_HDR)
        return DHCP_C_DROP_BAD_LENGTH;
    if (total > avail)
        return DHCP_C_DROP_TRUNCATED;
    if (ip[9] != 17 || (aca_rd16(ip + 6) & 0x3fff) != 0) /* UDP, not a fragment */
        return DHCP_C_DROP_NOT_DHCP;
    const uint8_t *udp = ip + ihl;
    size_t udp_len = aca_rd16(udp + 4);
    if (aca_rd16(udp + 2) != 67)
        return DHCP_C_DROP_NOT_DHCP;
    if (udp_len < UDP_HDR || udp_len > total - ihl)
        return DHCP_C_DROP_BAD_LENGTH;
    const uint8_t *m = udp + UDP_HDR;
    size_t mlen = udp_len - UDP_HDR;
    if (mlen > DHCP_MAX_MSG)
        return DHCP_C_DROP_OVERLONG;
    if (mlen < DHCP_MIN)
        return DHCP_C_DROP_TRUNCATED;
    if (m[0] != 1 || m[1] != 1 || m[2] != 6) /* BOOTREQUEST over Ethernet */
        return DHCP_C_DROP_NOT_DHCP;
    if (memcmp(m + BOOTP_FIXED, MAGIC, 4) != 0)
        return DHCP_C_DROP_BAD_COOKIE;
    r->bootp = m;
    r->bootp_len = mlen;
    int ended = 0;
    for (size_t i = DHCP_MIN; i < mlen;) {
        uint8_t code = m[i];
        if (code == OPT_PAD) {
            i++;
            continue;
        }
        if (code == OPT_END) {
            ended = 1;
            break;
        }
        if (i + 2 > mlen || i + 2 + m[i + 1] > mlen)
            return DHCP_C_DROP_OVERLONG;
        uint8_t olen = m[i + 1];
        const uint8_t *v = m + i + 2;
        switch (code) {
        case OPT_MSG_TYPE:
            if (olen != 1)
                return DHCP_C_DROP_BAD_OPTION;
            r->msg_type = v[0];
            break;
        case OPT_REQUESTED_IP:
            if (olen != 4)
                return DHCP_C_DROP_BAD_OPTION;
            r->has_requested = 1;
            r->requested_ip = aca_rd32(v);
            break;
        case OPT_SERVER_ID:
            if (olen != 4)
                return DHCP_C_DROP_BAD_OPTION;
            r->has_server_id = 1;
            r->server_id = aca_rd32(v);
            break;
        case OPT_PRL:
            if (olen == 0)
                return DHCP_C_DROP_BAD_OPTION;
            r->prl = v;
            r->prl_len = olen;
            break;
        case OPT_MAX_SIZE:
            if (olen != 2)
                return DHCP_C_DROP_BAD_OPTION;
            r->max_size = aca_rd16(v);
            break;
        case OPT_LEASE_TIME:
            if (olen != 4)
                return DHCP_C_DROP_BAD_OPTION;
            break;
        case OPT_OVERLOAD:
            if (olen != 1)
                return DHCP_C_DROP_BAD_OPTION;
            break;
        case OPT_CLIENT_ID:
            if (olen < 2)
                return DHCP_C_DROP_BAD_OPTION;
            break;
        default:
            break;
        }
        i += 2u + olen;
    }
    if (!ended)
        return DHCP_C_DROP_TRUNCATED;
    if (r->msg_type < DISCOVER || r->msg_type > INFORM || r->msg_type == OFFER || r->msg_type == ACK ||
        r->msg_type == NAK)
        return DHCP_C_DROP_BAD_MSG_TYPE;
    return 0;
}

/* ------------------------------------------------------------------ replies */
struct builder {
    uint8_t *p;
    size_t len, cap;
    uint8_t sent[32]; /* bitmap of option codes already written */
};

static int opt_put(struct builder *b, uint8_t code, const uint8_t *val, size_t n)
{
    if (b->sent[code >> 3] & (1u << (code & 7)))
        return 0;
    if (n > 255 || b->len + 2 + n + 1 > b->cap) /* always leave room for END */
        return -1;
    b->p[b->len] = code;
    b->p[b->len + 1] = (uint8_t)n;
    if (n)
        memcpy(b->p + b->len + 2, val, n);
    b->len += 2 + n;
    b->sent[code >> 3] |= (uint8_t)(1u << (code & 7));
    return 0;
}

static void opt_u32(struct builder *b, uint8_t code, uint32_t v)
{
    uint8_t raw[4];
    aca_wr32(raw, v);
    opt_put(b, code, raw, 4);
}

static void opt_profile(struct builder *b, const struct subnet *s, const struct lease *l, uint8_t code)
{
    if (code == OPT_HOSTNAME) {
        if (l->hostname_len)
            opt_put(b, code, (const uint8_t *)l->hostname, l->hostname_len > 255 ? 255 : l->hostname_len);
        return;
    }
    if (s->off[code]) {
        const uint8_t *tlv = s->opts + s->off[code] - 1;
        opt_put(b, code, tlv + 2, tlv[1]);
    }
}

static int port_allows(const struct port *p, const uint8_t *chaddr)
{
    if (p->n_macs == 0)
        return 1;
    for (uint32_t i = 0; i < p->n_macs; i++)
        if (memcmp(p->macs[i], chaddr, 6) == 0)
            return 1;
    return 0;
}

static int take_token(const dhcp_engine *e, struct port *p, uint64_t now_ns)
{
    if (e->rate == 0)
        return 1;
    if (now_ns > p->last_ns) {
        p->tokens += (double)(now_ns - p->last_ns) * e->rate / 1e9;
        if (p->tokens > e->burst)
            p->tokens = e->burst;
    }
    p->last_ns = now_ns;
    if (p->tokens < 1.0)
        return 0;
    p->tokens -= 1.0;
    return 1;
}

static size_t build_reply(const struct request *r, const struct port *port, const struct subnet *s,
                          const struct lease *l, uint8_t type, uint8_t *out, size_t out_cap)
{
    const uint8_t *q = r->bootp;
    uint32_t ciaddr = aca_rd32(q + 12), giaddr = aca_rd32(q + 24);
    uint16_t flags = aca_rd16(q + 10);
    size_t limit = 576; /* IP datagram size every client accepts (RFC 2131 2) */
    if (r->max_size > limit)
        limit = r->max_size;
    if (limit > 1500)
        limit = 1500;
    if (out_cap < ETH_HDR + limit)
        limit = out_cap > ETH_HDR ? out_cap - ETH_HDR : 0;
    if (limit < IP_HDR + UDP_HDR + DHCP_MIN + 64) /* room for the fixed part and a few options */
        return 0;
    memset(out, 0, ETH_HDR + IP_HDR + UDP_HDR + DHCP_MIN);
    uint8_t *ip = out + ETH_HDR, *udp = ip + IP_HDR, *m = udp + UDP_HDR;

    /* BOOTP fixed part */
    m[0] = 2;
    m[1] = 1;
    m[2] = 6;
    memcpy(m + 4, q + 4, 4); /* xid */
    aca_wr16(m + 10, flags);
    if (type != NAK) {
        if (r->msg_type == INFORM || r->msg_type == REQUEST)
            aca_wr32(m + 12, ciaddr);
        if (r->msg_type != INFORM)
            aca_wr32(m + 16, l->ip);
    }
    aca_wr32(m + 24, giaddr);
    memcpy(m + 28, q + 28, 16); /* chaddr */
    memcpy(m + BOOTP_FIXED, MAGIC, 4);

    struct builder b = {.p = m, .len = DHCP_MIN, .cap = limit - IP_HDR - UDP_HDR};
    opt_put(&b, OPT_MSG_TYPE, &type, 1);
    opt_u32(&b, OPT_SERVER_ID, s->server_ip);
    if (type == NAK) {
        static const char msg[] = "requested address is not this client's lease";
        opt_put(&b, OPT_MESSAGE, (const uint8_t *)msg, sizeof(msg) - 1);
    } else {
        if (r->msg_type != INFORM) {
            opt_u32(&b, OPT_LEASE_TIME, s->lease_time);
            opt_u32(&b, OPT_T1, s->lease_time / 2);
            opt_u32(&b, OPT_T2, (uint32_t)((uint64_t)s->lease_time * 7 / 8));
        }
        if (r->prl != NULL) { /* what the client asked for, in its order */
            for (size_t i = 0; i < r->prl_len; i++)
                opt_profile(&b, s, l, r->prl[i]);
        } else {
            for (size_t i = 0; i < s->opt_len; i += 2u + s->opts[i + 1])
                opt_profile(&b, s, l, s->opts[i]);
            opt_profile(&b, s, l, OPT_HOSTNAME);
        }
    }
    m[b.len++] = OPT_END;
    while (b.len < BOOTP_MIN_REPLY && b.len < b.cap)
        m[b.len++] = OPT_PAD;
    size_t mlen = b.len;

    /* Where the reply goes (RFC 2131 4.1) */
    uint32_t dst_ip;
    uint16_t dst_port = 68;
    const uint8_t *dst_mac = q + 28;
    static const uint8_t BCAST[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    if (giaddr) {
        dst_ip = giaddr;
        dst_port = 67;
        if (port->n_macs)
            dst_mac = port->macs[0];
    } else if (type == NAK || (flags & FLAG_BROADCAST)) {
        dst_ip = 0xffffffff;
        dst_mac = BCAST;
    } else if (ciaddr) {
        dst_ip = ciaddr;
    } else {
        dst_ip = l->ip;
    }

    /* Ethernet: a real source when the reply leaves directly; else the asking port's tag, which
     * OVS replaces by a real source address. */
    memcpy(out, dst_mac, 6);
    if (port->ifindex) {
        memcpy(out + 6, port->src_mac, 6);
    } else {
        out[6] = DHCP_TAG_0;
        out[7] = DHCP_TAG_1;
        aca_wr32(out + 8, r->ofport);
    }
    aca_wr16(out + 12, 0x0800);

    size_t ip_total = IP_HDR + UDP_HDR + mlen;
    ip[0] = 0x45;
    aca_wr16(ip + 2, (uint16_t)ip_total);
    ip[8] = 64;
    ip[9] = 17;
    aca_wr32(ip + 12, s->server_ip);
    aca_wr32(ip + 16, dst_ip);
    aca_wr16(ip + 10, csum_fold(csum_add(0, ip, IP_HDR)));

    aca_wr16(udp, 67);
    aca_wr16(udp + 2, dst_port);
    aca_wr16(udp + 4, (uint16_t)(UDP_HDR + mlen));
    uint32_t sum = csum_add(0, ip + 12, 8) + 17 + (uint32_t)(UDP_HDR + mlen);
    uint16_t c = csum_fold(csum_add(sum, udp, UDP_HDR + mlen));
    aca_wr16(udp + 6, c ? c : 0xffff);
    return ETH_HDR + ip_total;
}

static size_t handle_locked(dhcp_engine *e, const uint8_t *f, size_t len, uint8_t *out, size_t out_cap,
                            uint64_t now_ns, int *ifindex)
{
    struct request r;
    e->counters[DHCP_C_RX_FRAMES]++;
    /* The port and its bucket first: a flooding port costs one lookup per frame. */
    if (len >= ETH_HDR && f[6] == DHCP_TAG_0 && f[7] == DHCP_TAG_1) {
        struct port *p = aca_tbl_get(&e->ports, aca_rd32(f + 8), 0);
        if (p == NULL) {
            e->counters[DHCP_C_DROP_UNKNOWN_PORT]++;
            return 0;
        }
        if (!take_token(e, p, now_ns)) {
            e->counters[DHCP_C_DROP_RATE_LIMITED]++;
            return 0;
        }
    }
    int drop = parse(f, len, &r);
    if (drop) {
        e->counters[drop]++;
        return 0;
    }
    struct port *port = aca_tbl_get(&e->ports, r.ofport, 0);
    if (port == NULL) {
        e->counters[DHCP_C_DROP_UNKNOWN_PORT]++;
        return 0;
    }
    switch (r.msg_type) {
    case DISCOVER: e->counters[DHCP_C_RX_DISCOVER]++; break;
    case REQUEST: e->counters[DHCP_C_RX_REQUEST]++; break;
    case INFORM: e->counters[DHCP_C_RX_INFORM]++; break;
    case RELEASE: e->counters[DHCP_C_RX_RELEASE]++; return 0; /* the goal state owns every lease */
    case DECLINE: e->counters[DHCP_C_RX_DECLINE]++; return 0;
    default: break;
    }
    const uint8_t *chaddr = r.bootp + 28;
    if (!port_allows(port, chaddr)) {
        e->counters[DHCP_C_DROP_MAC_NOT_ALLOWED]++;
        return 0;
    }
    struct lease *l = aca_tbl_get(&e->leases, port->net_id, mac_key(chaddr));
    struct subnet *s = l ? aca_tbl_get(&e->subnets, l->handle, 0) : NULL;
    if (s == NULL) {
        e->counters[DHCP_C_DROP_NO_LEASE]++;
        return 0;
    }
    uint8_t type;
    if (r.msg_type == DISCOVER) {
        type = OFFER;
    } else if (r.msg_type == INFORM) {
        type = ACK;
    } else {
        if (r.has_server_id && r.server_id != s->server_ip) {
            e->counters[DHCP_C_DROP_OTHER_SERVER]++;
            return 0;
        }
        uint32_t wanted = r.has_requested ? r.requested_ip : aca_rd32(r.bootp + 12);
        type = wanted == l->ip ? ACK : NAK;
    }
    size_t n = build_reply(&r, port, s, l, type, out, out_cap);
    if (n) {
        e->counters[type == OFFER ? DHCP_C_TX_OFFER : type == ACK ? DHCP_C_TX_ACK : DHCP_C_TX_NAK]++;
        *ifindex = port->ifindex;
    }
    return n;
}

size_t dhcp_handle_frame(dhcp_engine *e, const uint8_t *frame, size_t len, uint8_t *out, size_t out_cap,
                         uint64_t now_ns, int *ifindex)
{
    int direct = 0;
    if (frame == NULL || out == NULL)
        return 0;
    pthread_mutex_lock(&e->lock);
    size_t n = handle_locked(e, frame, len, out, out_cap, now_ns, &direct);
    pthread_mutex_unlock(&e->lock);
    if (ifindex != NULL)
        *ifindex = n ? direct : 0;
    return n;
}

/* ------------------------------------------------------------------ I/O thread (pktio.c) */
static uint64_t now_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* One received batch under one lock: a reply per answered request. */
static unsigned io_batch(void *ctx, const struct pktio_frame *rx, unsigned n, struct pktio_frame *tx)
{
    dhcp_engine *e = ctx;
    uint64_t now = now_monotonic_ns();
    unsigned m = 0;
    pthread_mutex_lock(&e->lock);
    for (unsigned i = 0; i < n; i++) {
        size_t len = handle_locked(e, rx[i].data, rx[i].len, tx[m].data, PKTIO_BUF, now, &tx[m].ifindex);
        if (len)
            tx[m++].len = len;
    }
    pthread_mutex_unlock(&e->lock);
    return m;
}

static void io_tx_error(void *ctx, unsigned n)
{
    dhcp_engine *e = ctx;
    pthread_mutex_lock(&e->lock);
    e->counters[DHCP_C_TX_ERRORS] += n;
    pthread_mutex_unlock(&e->lock);
}

int dhcp_io_start(dhcp_engine *e, const char *ifname)
{
#ifdef __linux__
    /* Accept only unfragmented IPv4/UDP to port 67, so the thread never wakes for other traffic. */
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 12),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x0800, 0, 8),
        BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 23),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 17, 0, 6),
        BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 20),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x1fff, 4, 0),
        BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 14),
        BPF_STMT(BPF_LD | BPF_H | BPF_IND, 16),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 67, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0xffff),
        BPF_STMT(BPF_RET | BPF_K, 0),
    };
    struct sock_fprog prog = {.len = sizeof(code) / sizeof(code[0]), .filter = code};
    return pktio_start(&e->io, ifname, &prog, io_batch, io_tx_error, e);
#else
    return pktio_start(&e->io, ifname, NULL, io_batch, io_tx_error, e);
#endif
}

void dhcp_io_stop(dhcp_engine *e) { pktio_stop(&e->io); }

int dhcp_io_status(dhcp_engine *e, uint64_t *loops) { return pktio_status(&e->io, loops); }
