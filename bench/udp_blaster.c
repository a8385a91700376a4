/* udp_blaster: the UDP bench's sender in C (bench/load.py udp_blast with "native": the Python side
 * builds the datagrams and execs this). It sends the trains' TRAIN_STATUS datagrams round after round
 * with sendmmsg, each with the next seq and the wall time patched in and its CRC-32 recomputed, as
 * the Python sender does, but at a pace neither receiver keeps up with, so that each receiver's rate
 * is its own capacity and not the sender's pace (bench/udp_bench.py module doc).
 *
 * usage: udp_blaster PORT TEMPLATES TRAINS MAX_S
 *   TEMPLATES: TRAINS frames of FRAME_LEN bytes back to back (seq at 10, time_ms at 14, CRC at
 *   FRAME_LEN - 4, big-endian, as railcodecs.encode lays out a frame without MAC); removed once read.
 * stdin/stdout: the JSON-lines protocol of bench/load.py's turns mode. It prints {"ready": true},
 * starts paused; "resume" and "pause" are answered {"resumed": SENT} / {"paused": SENT}; "stop",
 * "quit" or EOF ends it with {"sent": SENT}. It stops by itself after MAX_S seconds.
 * Loopback only: it connects to 127.0.0.1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FRAME_LEN 64
#define BATCH 64

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32(const unsigned char *p, size_t n) {  /* zlib.crc32 (CRC-32/ISO-HDLC) */
    uint32_t c = 0xFFFFFFFFu;
    while (n--)
        c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void put_be32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static void put_be64(unsigned char *p, uint64_t v) {
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One command from stdin if a line is there within timeout_ms: 'r'esume, 'p'ause, 'q'uit, 0 none. */
static int command(int timeout_ms) {
    static char buf[256];
    static size_t have = 0;
    struct pollfd pfd = {0, POLLIN, 0};
    for (;;) {
        char *nl = memchr(buf, '\n', have);
        if (nl) {
            size_t len = (size_t)(nl - buf);
            int c = 0;
            if (len == 6 && !memcmp(buf, "resume", 6)) c = 'r';
            else if (len == 5 && !memcmp(buf, "pause", 5)) c = 'p';
            else c = 'q';  /* stop, quit, go or anything else: the bench is done with this sender */
            memmove(buf, nl + 1, have - len - 1);
            have -= len + 1;
            return c;
        }
        if (poll(&pfd, 1, timeout_ms) <= 0)
            return 0;
        ssize_t n = read(0, buf + have, sizeof buf - have);
        if (n <= 0 || have + (size_t)n >= sizeof buf)
            return 'q';
        have += (size_t)n;
        timeout_ms = 0;
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s PORT TEMPLATES TRAINS MAX_S\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), trains = atoi(argv[3]);
    double max_s = atof(argv[4]);
    if (port <= 0 || port > 65535 || trains <= 0) {
        fprintf(stderr, "udp_blaster: bad PORT %s or TRAINS %s\n", argv[1], argv[3]);
        return 2;
    }
    unsigned char *frames = malloc((size_t)trains * FRAME_LEN);
    FILE *f = fopen(argv[2], "rb");
    if (!frames || !f || fread(frames, FRAME_LEN, (size_t)trains, f) != (size_t)trains) {
        fprintf(stderr, "udp_blaster: cannot read %d frames of %d bytes from %s\n", trains, FRAME_LEN, argv[2]);
        return 2;
    }
    fclose(f);
    unlink(argv[2]);
    crc_init();
    int sock = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (sock < 0 || connect(sock, (struct sockaddr *)&to, sizeof to) < 0) {
        perror("udp_blaster: socket");
        return 2;
    }
    uint32_t *seq = calloc((size_t)trains, sizeof *seq);
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    memset(msgs, 0, sizeof msgs);
    unsigned long long sent = 0;
    int paused = 1;
    double deadline = mono_s() + max_s;
    printf("{\"ready\": true}\n");
    fflush(stdout);
    for (;;) {
        int c = command(paused ? 50 : 0);
        if (c == 'q' || mono_s() > deadline)
            break;
        if (c == 'r' || c == 'p') {
            paused = c == 'p';
            printf("{\"%s\": %llu}\n", paused ? "paused" : "resumed", sent);
            fflush(stdout);
        }
        if (paused)
            continue;
        uint64_t t = now_ms();
        for (int j0 = 0; j0 < trains; j0 += BATCH) {   /* one round: every train once */
            int n = trains - j0 < BATCH ? trains - j0 : BATCH;
            for (int k = 0; k < n; k++) {
                unsigned char *fr = frames + (size_t)(j0 + k) * FRAME_LEN;
                put_be32(fr + 10, ++seq[j0 + k]);
                put_be64(fr + 14, t);
                put_be32(fr + FRAME_LEN - 4, crc32(fr, FRAME_LEN - 4));
                iov[k].iov_base = fr;
                iov[k].iov_len = FRAME_LEN;
                msgs[k].msg_hdr.msg_iov = &iov[k];
                msgs[k].msg_hdr.msg_iovlen = 1;
            }
            int done = sendmmsg(sock, msgs, (unsigned)n, 0);
            if (done > 0)
                sent += (unsigned long long)done;
        }
    }
    printf("{\"sent\": %llu}\n", sent);
    fflush(stdout);
    return 0;
}
