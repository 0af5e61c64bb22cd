/* Saffron's test guest's clipboard agent: the least of spice-vdagent that QEMU's
 * qemu-vdagent chardev needs to pass text both ways (VDAgent messages in chunks on the
 * virtio-serial port com.redhat.spice.0). Built static on the host by
 * saffron.bench.guest; nothing of it is committed in binary form.
 *
 * - announces its capabilities (clipboard by demand, selections, grab serials);
 * - when the host grabs the clipboard with text, asks for it at once and prints
 *   "saffron-guest: clipboard <text>" on the console (newlines as \n);
 * - on SIGUSR1 grabs the clipboard with GUEST_TEXT and a count ("... 1", "... 2"),
 *   and gives that text when the host asks;
 * - when the host closes the port (QEMU does, to reset grab serials) opens it again.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef GUEST_TEXT
#define GUEST_TEXT "saffron guest clipboard"
#endif
#define PORT_NAME "com.redhat.spice.0"
#define MAX_MESSAGE (2 << 20)
#define CHUNK 2048

enum { MSG_CLIPBOARD = 4, MSG_CAPS = 6, MSG_GRAB = 7, MSG_REQUEST = 8, MSG_RELEASE = 9 };
enum { CAP_BY_DEMAND = 5, CAP_SELECTION = 6, CAP_GRAB_SERIAL = 17 };
enum { TYPE_UTF8 = 1 };

static volatile sig_atomic_t grab_wanted;
static int fd = -1;
static uint32_t serial_seen;
static unsigned grabs;
static char text[256];

static void on_usr1(int sig) { (void)sig; grab_wanted = 1; }

static void say(const char *what, const uint8_t *data, uint32_t len) {
    FILE *con = fopen("/dev/console", "w");
    if (!con) return;
    fprintf(con, "saffron-guest: %s", what);
    for (uint32_t i = 0; i < len; i++) {
        if (data[i] == '\n') fputs("\\n", con);
        else fputc(data[i], con);
    }
    fputc('\n', con);
    fclose(con);
}

static int write_all(const void *buf, size_t len) {
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n; len -= n;
    }
    return 0;
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static void send_msg(uint32_t type, const uint8_t *data, uint32_t size) {
    uint32_t total = 20 + size;
    uint8_t *msg = calloc(1, total);
    if (!msg) return;
    put32(msg, 1); put32(msg + 4, type); put32(msg + 16, size);
    memcpy(msg + 20, data, size);
    for (uint32_t off = 0; off < total; off += CHUNK) {
        uint32_t n = total - off < CHUNK ? total - off : CHUNK;
        uint8_t head[8];
        put32(head, 1); put32(head + 4, n);  /* VDP_CLIENT_PORT */
        if (write_all(head, 8) || write_all(msg + off, n)) break;
    }
    free(msg);
}

static void grab(void) {
    uint8_t body[12] = {0};  /* selection 0 (clipboard), serial, UTF-8 text */
    grabs++;
    snprintf(text, sizeof text, "%s %u", GUEST_TEXT, grabs);
    put32(body + 4, ++serial_seen); put32(body + 8, TYPE_UTF8);
    send_msg(MSG_GRAB, body, sizeof body);
    say("grabbed ", (const uint8_t *)text, strlen(text));
}

/* Once per opening of the port, asking for QEMU's: QEMU 7.2 waits for the guest to
 * speak first; 10.0 also asks on its own, but a second announcement from the guest makes
 * it reset its grab serials by closing the port, so that one is not answered. */
static void announce(void) {
    uint8_t caps[8] = {0};
    put32(caps, 1);
    put32(caps + 4, 1u << CAP_BY_DEMAND | 1u << CAP_SELECTION | 1u << CAP_GRAB_SERIAL);
    send_msg(MSG_CAPS, caps, sizeof caps);
    serial_seen = 0;
}

static void on_message(uint32_t type, const uint8_t *d, uint32_t size) {
    if (type == MSG_CAPS && size >= 8) {
        say("agent ", (const uint8_t *)"connected", 9);
    } else if (type == MSG_GRAB && size >= 8) {  /* selection, serial, types */
        if (d[0] != 0) return;
        serial_seen = get32(d + 4);
        for (uint32_t i = 8; i + 4 <= size; i += 4) {
            if (get32(d + i) == TYPE_UTF8) {
                uint8_t req[8] = {0};
                put32(req + 4, TYPE_UTF8);
                send_msg(MSG_REQUEST, req, sizeof req);
                return;
            }
        }
    } else if (type == MSG_CLIPBOARD && size >= 8) {
        if (d[0] == 0 && get32(d + 4) == TYPE_UTF8) say("clipboard ", d + 8, size - 8);
    } else if (type == MSG_REQUEST && size >= 8) {
        uint32_t n = strlen(text);
        uint8_t *reply = calloc(1, 8 + n);
        if (!reply) return;
        reply[0] = d[0];
        put32(reply + 4, get32(d + 4) == TYPE_UTF8 && grabs ? TYPE_UTF8 : 0);
        memcpy(reply + 8, text, n);
        send_msg(MSG_CLIPBOARD, reply, grabs ? 8 + n : 8);
        free(reply);
    }
}

static int open_port(void) {
    for (int tries = 0; tries < 100; tries++) {
        DIR *dir = opendir("/sys/class/virtio-ports");
        struct dirent *e;
        while (dir && (e = readdir(dir))) {
            char path[300], name[64] = {0};
            snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
            FILE *f = fopen(path, "r");
            if (!f) continue;
            if (fgets(name, sizeof name, f) && strncmp(name, PORT_NAME, strlen(PORT_NAME)) == 0) {
                fclose(f);
                snprintf(path, sizeof path, "/dev/%s", e->d_name);
                closedir(dir);
                return open(path, O_RDWR);
            }
            fclose(f);
        }
        if (dir) closedir(dir);
        usleep(100000);
    }
    return -1;
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;  /* no SA_RESTART: a read is interrupted */
    sigaction(SIGUSR1, &sa, NULL);
    static uint8_t buf[MAX_MESSAGE + 64];
    for (;;) {
        fd = open_port();
        if (fd < 0) { say("agent ", (const uint8_t *)"has no port", 11); return 1; }
        announce();
        uint32_t have = 0;       /* bytes of the current chunk's header+data gathered */
        uint8_t head[8];
        uint32_t chunk_left = 0, msg_len = 0;
        for (;;) {
            if (grab_wanted) { grab_wanted = 0; grab(); }
            ssize_t n;
            if (chunk_left == 0) {  /* a chunk header */
                n = read(fd, head + have, 8 - have);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) break;
                have += n;
                if (have < 8) continue;
                have = 0;
                chunk_left = get32(head + 4);
                continue;
            }
            uint32_t room = sizeof buf - msg_len;
            if (room == 0) { msg_len = 0; room = sizeof buf; }
            n = read(fd, buf + msg_len, chunk_left < room ? chunk_left : room);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            msg_len += n; chunk_left -= n;
            while (msg_len >= 20 && msg_len >= 20 + get32(buf + 16)) {
                uint32_t size = get32(buf + 16);
                on_message(get32(buf + 4), buf + 20, size);
                memmove(buf, buf + 20 + size, msg_len - 20 - size);
                msg_len -= 20 + size;
            }
        }
        close(fd);
        usleep(200000);
    }
}
