/* See pktio.h. */
#define _GNU_SOURCE
#include "pktio.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#ifdef __linux__
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

void pktio_init(struct pktio *io)
{
    memset(io, 0, sizeof(*io));
    io->fd = -1;
    io->stop_fd = -1;
}

struct pktio_buffers {
    struct mmsghdr rx[PKTIO_BATCH], tx[PKTIO_BATCH];
    struct iovec rx_iov[PKTIO_BATCH], tx_iov[PKTIO_BATCH];
    struct sockaddr_ll from[PKTIO_BATCH], to[PKTIO_BATCH];
    struct pktio_frame in[PKTIO_BATCH], out[PKTIO_BATCH];
    uint8_t rx_buf[PKTIO_BATCH][PKTIO_BUF];
    uint8_t tx_buf[PKTIO_BATCH][PKTIO_BUF];
};

/* The thread ends by itself: keep why, for pktio_status. */
static void *io_failed(struct pktio *io, int err)
{
    __atomic_store_n(&io->error, err, __ATOMIC_RELEASE);
    __atomic_store_n(&io->alive, 0, __ATOMIC_RELEASE);
    return NULL;
}

/* recvmmsg errors that mean the socket itself is unusable (not a passing condition). */
static int socket_broken(int err) { return err == EBADF || err == ENOTSOCK || err == EFAULT || err == EINVAL; }

static void *io_main(void *arg)
{
    struct pktio *io = arg;
    struct pktio_buffers *b = io->buf;
    for (int i = 0; i < PKTIO_BATCH; i++) {
        b->rx_iov[i].iov_base = b->rx_buf[i];
        b->rx_iov[i].iov_len = PKTIO_BUF;
        b->tx_iov[i].iov_base = b->tx_buf[i];
        b->out[i].data = b->tx_buf[i];
    }
    struct pollfd fds[2] = {{.fd = io->fd, .events = POLLIN}, {.fd = io->stop_fd, .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return io_failed(io, errno);
        }
        __atomic_add_fetch(&io->loops, 1, __ATOMIC_RELAXED);
        if (fds[1].revents & POLLIN)
            break;
        if ((fds[0].revents | fds[1].revents) & POLLNVAL)
            return io_failed(io, EBADF);
        for (int i = 0; i < PKTIO_BATCH; i++) {
            memset(&b->rx[i].msg_hdr, 0, sizeof(b->rx[i].msg_hdr));
            b->rx[i].msg_hdr.msg_iov = &b->rx_iov[i];
            b->rx[i].msg_hdr.msg_iovlen = 1;
            b->rx[i].msg_hdr.msg_name = &b->from[i];
            b->rx[i].msg_hdr.msg_namelen = sizeof(b->from[i]);
        }
        int n = recvmmsg(io->fd, b->rx, PKTIO_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0 && socket_broken(errno))
            return io_failed(io, errno);
        if (n <= 0)
            continue;
        unsigned k = 0;
        for (int i = 0; i < n; i++) {
            if (b->from[i].sll_pkttype == PACKET_OUTGOING || (b->rx[i].msg_hdr.msg_flags & MSG_TRUNC))
                continue;
            b->in[k].data = b->rx_buf[i];
            b->in[k].len = b->rx[i].msg_len;
            k++;
        }
        if (k == 0)
            continue;
        for (unsigned i = 0; i < k; i++) {
            b->out[i].len = 0;
            b->out[i].ifindex = 0;
        }
        unsigned m = io->batch(io->ctx, b->in, k, b->out);
        if (m > k)
            m = k;
        for (unsigned i = 0; i < m; i++) {
            b->tx_iov[i].iov_len = b->out[i].len;
            memset(&b->tx[i].msg_hdr, 0, sizeof(b->tx[i].msg_hdr));
            b->tx[i].msg_hdr.msg_iov = &b->tx_iov[i];
            b->tx[i].msg_hdr.msg_iovlen = 1;
            if (b->out[i].ifindex > 0 && b->out[i].len >= 14) {
                struct sockaddr_ll *to = &b->to[i];
                memset(to, 0, sizeof(*to));
                to->sll_family = AF_PACKET;
                to->sll_ifindex = b->out[i].ifindex;
                memcpy(&to->sll_protocol, b->out[i].data + 12, 2); /* the frame's EtherType */
                to->sll_halen = 6;
                memcpy(to->sll_addr, b->out[i].data, 6);
                b->tx[i].msg_hdr.msg_name = to;
                b->tx[i].msg_hdr.msg_namelen = sizeof(*to);
            }
        }
        for (unsigned sent = 0; sent < m;) {
            int r = sendmmsg(io->fd, b->tx + sent, m - sent, 0);
            if (r <= 0) {
                if (r < 0 && errno == EINTR)
                    continue;
                if (io->tx_error != NULL)
                    io->tx_error(io->ctx, m - sent);
                break;
            }
            sent += (unsigned)r;
        }
    }
    __atomic_store_n(&io->alive, 0, __ATOMIC_RELEASE);
    return NULL;
}

int pktio_start(struct pktio *io, const char *ifname, const struct sock_fprog *filter, pktio_batch_fn batch,
                pktio_error_fn tx_error, void *ctx)
{
    if (io->running)
        return -EBUSY;
    if (batch == NULL || ifname == NULL)
        return -EINVAL;
    unsigned ifindex = if_nametoindex(ifname);
    if (ifindex == 0)
        return -ENODEV;
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (fd < 0)
        return -errno;
    int one = 1, rcvbuf = 4 << 20;
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)); /* best effort: also checked */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = (int)ifindex};
    if ((filter != NULL && setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, filter, sizeof(*filter)) != 0) ||
        bind(fd, (struct sockaddr *)&sll, sizeof(sll)) != 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    int stop_fd = eventfd(0, EFD_CLOEXEC);
    if (stop_fd < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    struct pktio_buffers *buf = calloc(1, sizeof(*buf));
    if (buf == NULL) {
        close(fd);
        close(stop_fd);
        return -ENOMEM;
    }
    io->fd = fd;
    io->stop_fd = stop_fd;
    io->batch = batch;
    io->tx_error = tx_error;
    io->ctx = ctx;
    io->buf = buf;
    __atomic_store_n(&io->error, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&io->alive, 1, __ATOMIC_RELEASE);
    int rc = pthread_create(&io->thread, NULL, io_main, io);
    if (rc != 0) {
        __atomic_store_n(&io->alive, 0, __ATOMIC_RELEASE);
        close(fd);
        close(stop_fd);
        free(buf);
        io->fd = io->stop_fd = -1;
        io->buf = NULL;
        return -rc;
    }
    io->running = 1;
    return 0;
}

void pktio_stop(struct pktio *io)
{
    if (!io->running)
        return;
    uint64_t one = 1;
    if (write(io->stop_fd, &one, sizeof(one)) != sizeof(one))
        return; /* cannot wake the thread: leave it rather than join forever */
    pthread_join(io->thread, NULL);
    close(io->fd);
    close(io->stop_fd);
    free(io->buf);
    io->buf = NULL;
    io->fd = io->stop_fd = -1;
    io->running = 0;
    __atomic_store_n(&io->error, 0, __ATOMIC_RELEASE);
}

int pktio_status(struct pktio *io, uint64_t *loops)
{
    if (loops != NULL)
        *loops = __atomic_load_n(&io->loops, __ATOMIC_RELAXED);
    if (__atomic_load_n(&io->alive, __ATOMIC_ACQUIRE))
        return 1;
    int err = __atomic_load_n(&io->error, __ATOMIC_ACQUIRE);
    return err ? -err : 0;
}

int pktio_send(struct pktio *io, const uint8_t *frame, size_t len)
{
    if (!io->running)
        return -ENOTCONN;
    ssize_t n = send(io->fd, frame, len, 0);
    if (n < 0)
        return -errno;
    return (size_t)n == len ? 0 : -EIO;
}
#else
void pktio_init(struct pktio *io)
{
    memset(io, 0, sizeof(*io));
    io->fd = -1;
    io->stop_fd = -1;
}

int pktio_start(struct pktio *io, const char *ifname, const struct sock_fprog *filter, pktio_batch_fn batch,
                pktio_error_fn tx_error, void *ctx)
{
    (void)io, (void)ifname, (void)filter, (void)batch, (void)tx_error, (void)ctx;
    return -ENOSYS;
}

void pktio_stop(struct pktio *io) { (void)io; }

int pktio_status(struct pktio *io, uint64_t *loops)
{
    (void)io;
    if (loops != NULL)
        *loops = 0;
    return 0;
}

int pktio_send(struct pktio *io, const uint8_t *frame, size_t len)
{
    (void)io, (void)frame, (void)len;
    return -ENOSYS;
}
#endif
