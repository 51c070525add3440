/* vsockflood: connects to `count` consecutive vsock ports of `cid` from `first`, as fast
 * as it can, for at most `seconds`: a hostile guest hammering host ports nobody listens
 * on. Connects are non-blocking (a host that never answers would otherwise allow one
 * attempt per connect timeout); each socket is closed right after its request is sent.
 * Prints how many connects were attempted and how they ended.
 *
 *   vsockflood <cid> <first port> <count> <seconds>
 *
 * Built static by server/tests/hostile_bounds.rs into its test image. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s cid first count seconds\n", argv[0]);
        return 2;
    }
    unsigned cid = strtoul(argv[1], 0, 10), first = strtoul(argv[2], 0, 10);
    long count = strtol(argv[3], 0, 10), seconds = strtol(argv[4], 0, 10);
    time_t end = time(0) + seconds;
    long tried = 0, connected = 0, refused = 0, pending = 0, other = 0;
    int first_errno = 0;
    for (long i = 0; i < count && time(0) < end; i++) {
        int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            perror("socket");
            return 1;
        }
        struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = cid,
                                   .svm_port = first + (unsigned)(i % 50000)};
        tried++;
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0)
            connected++;
        else if (errno == ECONNRESET || errno == ECONNREFUSED)
            refused++;
        else if (errno == EINPROGRESS)
            pending++;
        else if (other++ == 0)
            first_errno = errno;
        close(fd);
    }
    printf("tried %ld connected %ld refused %ld pending %ld other %ld (errno %d)\n", tried,
           connected, refused, pending, other, first_errno);
    return 0;
}
