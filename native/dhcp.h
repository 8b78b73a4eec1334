/* DHCPv4 responder engine for the Alcor host agent.
 *
 * One opaque engine holds every table (subnet profiles, leases keyed by (network id, MAC),
 * ports keyed by OpenFlow port number) and the counters; nothing is global, so the Python side
 * creates, resets and destroys engines at will. Every public function takes the engine's lock:
 * the I/O thread (dhcp_io_start) and Python updates may run at the same time.
 *
 * Requests carry the asking OpenFlow port in their Ethernet source address (DHCP_TAG_OUI:port,
 * see docs/pipeline.md), written by OVS on the way to the responder. A reply leaves directly
 * out of the port's own interface when the agent declared it (dhcp_port_direct): no second trip
 * through ovs-vswitchd. Otherwise it goes back through OVS with the same tag as its source,
 * which OVS replaces by a real address before delivering it to that port.
 */
#ifndef ACA_DHCP_H
#define ACA_DHCP_H

#include <stddef.h>
#include <stdint.h>

typedef struct dhcp_engine dhcp_engine;

/* First two octets of a tagged source MAC; the other four are the ofport (big endian). */
#define DHCP_TAG_0 0x0a
#define DHCP_TAG_1 0xca

#define DHCP_MAX_HOSTNAME 255
#define DHCP_MAX_PROFILE_OPTIONS 1200 /* bytes of encoded options per subnet profile */
#define DHCP_MAX_FRAME 1518
#define DHCP_MAX_PORT_MACS 1024 /* the port's own MAC and its allowed address pairs' */

enum dhcp_counter {
    DHCP_C_RX_FRAMES,    /* every frame handed to the engine */
    DHCP_C_RX_DISCOVER,
    DHCP_C_RX_REQUEST,
    DHCP_C_RX_INFORM,
    DHCP_C_RX_RELEASE,
    DHCP_C_RX_DECLINE,
    DHCP_C_TX_OFFER,
    DHCP_C_TX_ACK,
    DHCP_C_TX_NAK,
    DHCP_C_DROP_NOT_DHCP,       /* not IPv4/UDP to port 67, or not a BOOTREQUEST */
    DHCP_C_DROP_TRUNCATED,      /* shorter than its headers, or options without END */
    DHCP_C_DROP_BAD_LENGTH,     /* IP/UDP length fields inconsistent with the frame */
    DHCP_C_DROP_BAD_OPTION,     /* an option of fixed size (53, 50, 54, 57, ...) with another length */
    DHCP_C_DROP_OVERLONG,       /* an option running past the message, or a message above 1472 bytes */
    DHCP_C_DROP_BAD_COOKIE,     /* wrong magic cookie */
    DHCP_C_DROP_BAD_MSG_TYPE,   /* missing or not a client message type */
    DHCP_C_DROP_UNKNOWN_PORT,   /* no tag, or a port the agent did not declare */
    DHCP_C_DROP_MAC_NOT_ALLOWED, /* chaddr not among the port's MACs */
    DHCP_C_DROP_NO_LEASE,       /* no lease for (network, chaddr) */
    DHCP_C_DROP_OTHER_SERVER,   /* a REQUEST for another server */
    DHCP_C_DROP_RATE_LIMITED,   /* the port's token bucket is empty */
    DHCP_C_TX_ERRORS,           /* replies the socket refused (I/O thread) */
    DHCP_C_COUNT
};

dhcp_engine *dhcp_engine_new(void);
void dhcp_engine_free(dhcp_engine *e);
/* Forget every subnet, lease and port and zero the counters. */
void dhcp_engine_clear(dhcp_engine *e);

/* Subnet profile ``handle``: server identifier (the gateway IP, host order), lease time (s) and
 * the options it hands out as encoded TLVs (code, len, value...), validated here. 0 or -1. */
int dhcp_subnet_set(dhcp_engine *e, uint32_t handle, uint32_t server_ip, uint32_t lease_time,
                    const uint8_t *options, size_t options_len);
int dhcp_subnet_del(dhcp_engine *e, uint32_t handle);

/* Lease of ``mac`` on network ``net_id`` (the VNI): address (host order), profile, hostname. */
int dhcp_lease_set(dhcp_engine *e, uint32_t net_id, const uint8_t *mac, uint32_t ip, uint32_t handle,
                   const char *hostname);
int dhcp_lease_del(dhcp_engine *e, uint32_t net_id, const uint8_t *mac);

/* OpenFlow port ``ofport`` asks on network ``net_id`` for one of ``macs`` (n_macs * 6 bytes, at
 * most DHCP_MAX_PORT_MACS; none: any MAC of the network). Relayed replies go to the first MAC. */
int dhcp_port_set(dhcp_engine *e, uint32_t ofport, uint32_t net_id, const uint8_t *macs, size_t n_macs);
int dhcp_port_del(dhcp_engine *e, uint32_t ofport);
/* Replies to ``ofport`` leave directly from interface ``ifindex`` with Ethernet source ``src_mac``
 * (6 bytes); ifindex 0: back through OVS. The port must be declared. 0 or -1. */
int dhcp_port_direct(dhcp_engine *e, uint32_t ofport, int ifindex, const uint8_t *src_mac);

/* Per-port token bucket: ``rate`` requests per second, ``burst`` at most; rate 0 = unlimited. */
void dhcp_set_rate_limit(dhcp_engine *e, uint32_t rate, uint32_t burst);

/* Answer one tagged frame: returns the reply's length in ``out`` (0: no reply). ``now_ns`` is a
 * monotonic clock for the rate limiter. ``ifindex`` (may be NULL) receives the interface the
 * reply leaves from directly, 0 when it goes back through OVS. */
size_t dhcp_handle_frame(dhcp_engine *e, const uint8_t *frame, size_t len, uint8_t *out, size_t out_cap,
                         uint64_t now_ns, int *ifindex);

/* Copy up to ``n`` counters (enum dhcp_counter order) into ``out``; returns how many exist. */
size_t dhcp_counters(dhcp_engine *e, uint64_t *out, size_t n);
const char *dhcp_counter_name(size_t i);
/* Table sizes: leases, ports, subnet profiles. */
void dhcp_sizes(dhcp_engine *e, uint64_t *leases, uint64_t *ports, uint64_t *subnets);

/* I/O thread on interface ``ifname`` (AF_PACKET, batched receive and send); 0 or -errno. */
int dhcp_io_start(dhcp_engine *e, const char *ifname);
void dhcp_io_stop(dhcp_engine *e);
/* 1 while the I/O thread runs, 0 when not started or stopped, -errno when it ended by itself
 * (the socket became unusable); ``loops`` (may be NULL) receives its wake-up count. */
int dhcp_io_status(dhcp_engine *e, uint64_t *loops);

#endif
