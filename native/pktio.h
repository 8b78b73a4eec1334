/* AF_PACKET I/O thread shared by the native engines: one socket bound to an agent-owned OVS
 * internal port, batched receive (recvmmsg) and send (sendmmsg), stopped through an eventfd.
 * A frame to send may name another interface (``ifindex``): it leaves there directly.
 *
 * The thread hands each received batch to the engine's ``batch`` callback, which writes the
 * frames to send back into ``tx`` and returns how many; frames the kernel reports as our own
 * (PACKET_OUTGOING) or truncated never reach the callback.
 *
 * The thread allocates nothing: its buffers come from pktio_start, so an allocation failure is
 * an error returned to the caller. It ends only when stopped, or by itself on an error no retry
 * can fix (poll failing, the socket unusable); then pktio_status reports that error.
 */
#ifndef ACA_PKTIO_H
#define ACA_PKTIO_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define PKTIO_BATCH 64
#define PKTIO_BUF 2048

struct sock_fprog; /* <linux/filter.h>: a classic BPF program attached to the socket */

struct pktio_frame {
    uint8_t *data; /* PKTIO_BUF bytes */
    size_t len;
    int ifindex; /* tx: send out of this interface instead of the socket's own (0: the socket's) */
};

/* Handle ``n`` received frames; fill tx[0..m) (data is preallocated, set len); return m <= n. */
typedef unsigned (*pktio_batch_fn)(void *ctx, const struct pktio_frame *rx, unsigned n, struct pktio_frame *tx);
/* ``n`` frames of a batch could not be sent. */
typedef void (*pktio_error_fn)(void *ctx, unsigned n);

struct pktio_buffers;

struct pktio {
    int fd;
    int stop_fd;
    int running; /* started and not yet joined */
    int alive;   /* the thread is in its loop (atomic) */
    int error;   /* errno that ended the thread by itself (atomic), 0 otherwise */
    uint64_t loops; /* wake-ups of the thread (atomic) */
    pthread_t thread;
    struct pktio_buffers *buf;
    pktio_batch_fn batch;
    pktio_error_fn tx_error;
    void *ctx;
};

void pktio_init(struct pktio *io);
/* Open the socket on ``ifname`` (with ``filter`` when not NULL) and start the thread; 0 or -errno. */
int pktio_start(struct pktio *io, const char *ifname, const struct sock_fprog *filter, pktio_batch_fn batch,
                pktio_error_fn tx_error, void *ctx);
void pktio_stop(struct pktio *io);
/* 1 while the thread runs, 0 when it is not started (or stopped), -errno when it ended by itself;
 * ``loops`` (may be NULL) receives its wake-up count. */
int pktio_status(struct pktio *io, uint64_t *loops);
/* Send one frame on the running socket from any thread; 0 or -errno. */
int pktio_send(struct pktio *io, const uint8_t *frame, size_t len);

#endif
