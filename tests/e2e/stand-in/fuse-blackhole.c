/*
 * Stand-in hostile tenant: fuse-blackhole <mountpoint>
 *
 * Mounts a FUSE file system over <mountpoint> using the raw kernel protocol
 * (no libfuse), answers the FUSE_INIT handshake and then never answers
 * anything else.  Every request the kernel sends is read (so it counts as
 * "sent to userspace") and dropped; a process that looks something up or
 * reads under the mount point then waits in the kernel, uninterruptibly,
 * until this daemon dies or the connection is aborted.
 *
 * Prints "ready" on stdout once the mount is in place and the INIT reply
 * has been written.  Exits 0 when the connection goes away (ENODEV), 1 on
 * setup failure.
 *
 * Build: gcc -static -O2 -o fuse-blackhole fuse-blackhole.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define BUF_SIZE ((1u << 20) + 4096u)

#if BUF_SIZE < FUSE_MIN_READ_BUFFER
#error "buffer smaller than FUSE_MIN_READ_BUFFER"
#endif

static int reply_init(int fd, const struct fuse_in_header *ih,
                      const struct fuse_init_in *in)
{
    struct fuse_out_header oh;
    struct fuse_init_out out;
    struct iovec iov[2];
    size_t outsize;
    ssize_t n;

    memset(&out, 0, sizeof(out));
    out.major = FUSE_KERNEL_VERSION;
    if (in->major == FUSE_KERNEL_VERSION)
        out.minor = in->minor < FUSE_KERNEL_MINOR_VERSION
                        ? in->minor : FUSE_KERNEL_MINOR_VERSION;
    else
        /* Kernel speaks a newer major: reply with ours and let it
         * re-send INIT (or give up). */
        out.minor = FUSE_KERNEL_MINOR_VERSION;
    out.max_readahead = in->max_readahead;
    out.flags = 0;
    out.max_write = 4096;
#ifdef FUSE_MAX_PAGES
    out.max_pages = 1;
#endif

    /* Older protocol minors expect a shorter reply. */
    outsize = sizeof(out);
#ifdef FUSE_COMPAT_22_INIT_OUT_SIZE
    if (out.minor < 23)
        outsize = FUSE_COMPAT_22_INIT_OUT_SIZE;
#endif
#ifdef FUSE_COMPAT_INIT_OUT_SIZE
    if (out.minor < 5)
        outsize = FUSE_COMPAT_INIT_OUT_SIZE;
#endif

    memset(&oh, 0, sizeof(oh));
    oh.len = (uint32_t)(sizeof(oh) + outsize);
    oh.error = 0;
    oh.unique = ih->unique;

    iov[0].iov_base = &oh;
    iov[0].iov_len = sizeof(oh);
    iov[1].iov_base = &out;
    iov[1].iov_len = outsize;
    do {
        n = writev(fd, iov, 2);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        perror("fuse-blackhole: write INIT reply");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    char opts[256];
    unsigned char *buf;
    int fd, nfd;
    int ready = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: %s <mountpoint>\n", argv[0]);
        return 1;
    }

    signal(SIGPIPE, SIG_IGN);

    /* Close stdin (point it at /dev/null) and make sure fds 0-2 are all
     * taken, so /dev/fuse never lands on stdin/stdout/stderr. */
    nfd = open("/dev/null", O_RDWR);
    if (nfd >= 0) {
        if (nfd != 0) {
            dup2(nfd, 0);
            close(nfd);
        }
    } else {
        close(0);
    }
    for (;;) {
        nfd = open("/dev/null", O_RDWR);
        if (nfd < 0)
            break;
        if (nfd > 2) {
            close(nfd);
            break;
        }
    }

    buf = malloc(BUF_SIZE);
    if (buf == NULL) {
        perror("fuse-blackhole: malloc");
        return 1;
    }

    fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        perror("fuse-blackhole: open /dev/fuse");
        return 1;
    }

    snprintf(opts, sizeof(opts),
             "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", fd);
    if (mount("blackhole", argv[1], "fuse.blackhole", MS_NOSUID | MS_NODEV,
              opts) != 0) {
        perror("fuse-blackhole: mount");
        return 1;
    }

    for (;;) {
        const struct fuse_in_header *ih;
        ssize_t n = read(fd, buf, BUF_SIZE);

        if (n < 0) {
            if (errno == ENODEV)
                return 0;  /* unmounted or connection aborted */
            if (errno == EINTR || errno == EAGAIN || errno == ENOENT)
                continue;  /* ENOENT: request was interrupted before read */
            perror("fuse-blackhole: read /dev/fuse");
            return 1;
        }
        if (n == 0)
            return 0;
        if ((size_t)n < sizeof(*ih))
            continue;
        ih = (const struct fuse_in_header *)buf;

        if (ih->opcode == FUSE_INIT && !ready) {
            if ((size_t)n < sizeof(*ih) + 8) {
                fprintf(stderr, "fuse-blackhole: short INIT request\n");
                return 1;
            }
            {
                /* Copy: older kernels send a shorter fuse_init_in. */
                struct fuse_init_in in;
                size_t have = (size_t)n - sizeof(*ih);

                memset(&in, 0, sizeof(in));
                memcpy(&in, buf + sizeof(*ih),
                       have < sizeof(in) ? have : sizeof(in));
                if (reply_init(fd, ih, &in) != 0)
                    return 1;
                if (in.major != FUSE_KERNEL_VERSION)
                    continue;  /* wait for the re-sent INIT */
            }
            ready = 1;
            fputs("ready\n", stdout);
            fflush(stdout);
            continue;
        }

        /* Everything else, FUSE_INTERRUPT and FUSE_FORGET included: read
         * and never answer.  The request stays "sent" in the kernel and
         * whoever issued it waits until the connection dies. */
    }
}
