/*
 * labtool: the dom0 side (and a Linux stand-in for the guest side) of the Ferrite
 * lab's grant-table and event-channel tests.
 *
 *   labtool dom0 DOMID     run the grant-map, evtchn and grant-to-dom0 tests against
 *                          the guest DOMID; prints one "LAB-TEST <name> PASS|FAIL ..."
 *                          line per test and exits 0 only if all passed.
 *   labtool peer           play Ferrite's part of the protocol from inside a Linux PV
 *                          guest (used to develop the lab before Ferrite exists).
 *   labtool iommu-op SUBOP [ADDR | FIELD=VALUE...]
 *                          issue hypercall 43 (__HYPERVISOR_iommu_op, PV-IOMMU) with
 *                          sub-op SUBOP and a 64-byte argument (zeroed, or with the
 *                          named fields set: see fill_fields) through privcmd;
 *                          prints one "LAB-IOMMU ..." line with the result (and, for
 *                          query_capabilities, the decoded capabilities; ctx= for
 *                          alloc, mapped=/unmapped= for map/unmap). Stock Xen
 *                          answers ENOSYS. ADDR: pass this address as the argument
 *                          instead (a hostile pointer: unmapped, or Xen's own range).
 *   labtool own-pages N    give dom0 N new pages of its own (max_mem + N, then
 *                          XENMEM_increase_reservation); prints "LAB-PAGES ... mfns=".
 *                          In a PV domU (domctl refused: EPERM) only the
 *                          increase_reservation, within the domain's headroom.
 *   labtool release-pages MFN...
 *                          give them back (decrease_reservation, max_mem - N; a
 *                          domU: decrease_reservation only).
 *   labtool nvme-identify SBDF SQ=IOVA:MFN CQ=IOVA:MFN DATA=IOVA[:MFN]...
 *                          drive an NVMe controller (unbound from Linux) from here:
 *                          admin queues and Identify data at the given bus
 *                          addresses (see run_nvme_identify).
 *
 * Protocol keys live under /local/domain/<domid>/data/ferrite/test/ (see lab/README.md).
 * Ioctl numbers and structures come from the kernel's uapi headers
 * <xen/gntalloc.h>, <xen/gntdev.h> and <xen/evtchn.h> (linux-libc-dev).
 * Build: gcc -static -O2 -Wall -o labtool labtool.c
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
/* The uapi headers use these Xen public types without defining them
 * (xen/include/public/xen.h: domid_t is uint16_t; grant_table.h: grant_ref_t is uint32_t). */
typedef uint16_t domid_t;
typedef uint32_t grant_ref_t;
#include <xen/evtchn.h>
#include <xen/gntalloc.h>
#include <xen/gntdev.h>
/* <xen/privcmd.h> needs kernel-internal headers: its hypercall ioctl, as the
 * uapi header defines it. */
struct privcmd_hypercall {
    uint64_t op;
    uint64_t arg[5];
};
#define IOCTL_PRIVCMD_HYPERCALL _IOC(_IOC_NONE, 'P', 0, sizeof(struct privcmd_hypercall))

#define PAGE 4096

static uint8_t pattern_dom0(unsigned i) { return (uint8_t)(((i * 131) + 17 + (i >> 8)) & 0xff); }
static uint8_t pattern_guest(unsigned i) { return (uint8_t)(((i * 29) + 5) & 0xff); }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void result(const char *name, int pass, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    printf("LAB-TEST %s %s %s\n", name, pass ? "PASS" : "FAIL", detail);
    fflush(stdout);
}

static void info(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("labtool: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

/* Key prefix: absolute for dom0, relative (to the guest's home) for the peer. */
static char prefix[128];

/* Read a xenstore key below prefix; returns 0 and fills buf, or -1 if absent. */
static int xs_read(const char *key, char *buf, size_t len)
{
    char cmd[320];
    snprintf(cmd, sizeof cmd, "xenstore-read '%s%s' 2>/dev/null", prefix, key);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = fread(buf, 1, len - 1, p);
    buf[n] = 0;
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = 0;
    return pclose(p) == 0 ? 0 : -1;
}

static int xs_write(const char *key, const char *val)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "xenstore-write '%s%s' '%s'", prefix, key, val);
    return system(cmd) == 0 ? 0 : -1;
}

/* Poll key until it exists (any value) or the deadline passes. */
static int xs_wait(const char *key, char *buf, size_t len, double seconds)
{
    double end = now() + seconds;
    do {
        if (xs_read(key, buf, len) == 0)
            return 0;
        usleep(100 * 1000);
    } while (now() < end);
    return -1;
}

/* Wait for one event on an evtchn fd; returns the port or -1 on timeout/error. */
static int evtchn_wait(int fd, double seconds)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    double end = now() + seconds;
    for (;;) {
        int ms = (int)((end - now()) * 1000);
        if (ms <= 0)
            return -1;
        int r = poll(&pfd, 1, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        uint32_t port;
        if (read(fd, &port, sizeof port) != sizeof port)
            return -1;
        /* Writing the port back unmasks it (evtchn device semantics). */
        if (write(fd, &port, sizeof port) != sizeof port)
            return -1;
        return (int)port;
    }
}

/* Find the first mismatch of a page against a pattern; -1 if it matches. */
static long first_mismatch(const uint8_t *p, uint8_t (*pat)(unsigned), unsigned from)
{
    for (unsigned i = from; i < PAGE; i++)
        if (p[i] != pat(i))
            return i;
    return -1;
}

/* ---------------------------------------------------------------- dom0 side */

static int grant_to_dom0(int domid)
{
    char val[64];
    if (xs_read("our-gref", val, sizeof val) != 0) {
        result("grant-to-dom0", 0, "%sour-gref is absent", prefix);
        return 0;
    }
    char *end;
    unsigned long ref = strtoul(val, &end, 10);
    if (!*val || *end) {
        result("grant-to-dom0", 0, "%sour-gref = '%s', expected a decimal grant reference", prefix, val);
        return 0;
    }
    int fd = open("/dev/xen/gntdev", O_RDWR);
    if (fd < 0) {
        result("grant-to-dom0", 0, "open /dev/xen/gntdev: %s", strerror(errno));
        return 0;
    }
    struct ioctl_gntdev_map_grant_ref map;
    memset(&map, 0, sizeof map);
    map.count = 1;
    map.refs[0].domid = (uint32_t)domid;
    map.refs[0].ref = (uint32_t)ref;
    if (ioctl(fd, IOCTL_GNTDEV_MAP_GRANT_REF, &map) != 0) {
        result("grant-to-dom0", 0, "IOCTL_GNTDEV_MAP_GRANT_REF dom %d ref %lu: %s", domid, ref, strerror(errno));
        close(fd);
        return 0;
    }
    uint8_t *p = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, (off_t)map.index);
    int ok = 0;
    if (p == MAP_FAILED) {
        result("grant-to-dom0", 0, "mmap of dom %d ref %lu failed: %s (a grant the guest did not make, or made for another domain, fails here)",
               domid, ref, strerror(errno));
    } else {
        long bad = first_mismatch(p, pattern_guest, 0);
        if (bad < 0) {
            ok = 1;
            result("grant-to-dom0", 1, "ref %lu: 4096 bytes match ((i*29)+5)&0xff", ref);
        } else {
            result("grant-to-dom0", 0, "ref %lu: byte %ld is 0x%02x, expected 0x%02x (first bytes %02x %02x %02x %02x)",
                   ref, bad, p[bad], pattern_guest(bad), p[0], p[1], p[2], p[3]);
        }
        munmap(p, PAGE);
    }
    struct ioctl_gntdev_unmap_grant_ref unmap = { .index = map.index, .count = 1 };
    ioctl(fd, IOCTL_GNTDEV_UNMAP_GRANT_REF, &unmap);
    close(fd);
    return ok;
}

static int run_dom0(int domid)
{
    int pass = 1;
    snprintf(prefix, sizeof prefix, "/local/domain/%d/data/ferrite/test/", domid);

    /* Test 4 is independent: the guest published our-gref before it said ready. */
    pass &= grant_to_dom0(domid);

    /* Step 1: a writable page for the guest, filled with the dom0 pattern. */
    int ga = open("/dev/xen/gntalloc", O_RDWR);
    if (ga < 0) {
        result("grant-map", 0, "open /dev/xen/gntalloc: %s", strerror(errno));
        result("evtchn", 0, "not run: grant-map setup failed");
        return 0;
    }
    struct ioctl_gntalloc_alloc_gref alloc;
    memset(&alloc, 0, sizeof alloc);
    alloc.domid = (uint16_t)domid;
    alloc.flags = GNTALLOC_FLAG_WRITABLE;
    alloc.count = 1;
    if (ioctl(ga, IOCTL_GNTALLOC_ALLOC_GREF, &alloc) != 0) {
        result("grant-map", 0, "IOCTL_GNTALLOC_ALLOC_GREF for dom %d: %s", domid, strerror(errno));
        result("evtchn", 0, "not run: grant-map setup failed");
        return 0;
    }
    volatile uint8_t *page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, ga, (off_t)alloc.index);
    if (page == MAP_FAILED) {
        result("grant-map", 0, "mmap of gntalloc page: %s", strerror(errno));
        result("evtchn", 0, "not run: grant-map setup failed");
        return 0;
    }
    for (unsigned i = 0; i < PAGE; i++)
        page[i] = pattern_dom0(i);
    uint32_t gref = alloc.gref_ids[0];

    int ev = open("/dev/xen/evtchn", O_RDWR);
    if (ev < 0) {
        result("grant-map", 0, "open /dev/xen/evtchn: %s", strerror(errno));
        result("evtchn", 0, "open /dev/xen/evtchn: %s", strerror(errno));
        return 0;
    }
    struct ioctl_evtchn_bind_unbound_port bind = { .remote_domain = (unsigned)domid };
    int port = ioctl(ev, IOCTL_EVTCHN_BIND_UNBOUND_PORT, &bind);
    if (port < 0) {
        result("grant-map", 0, "IOCTL_EVTCHN_BIND_UNBOUND_PORT remote %d: %s", domid, strerror(errno));
        result("evtchn", 0, "IOCTL_EVTCHN_BIND_UNBOUND_PORT remote %d: %s", domid, strerror(errno));
        return 0;
    }
    char num[32];
    snprintf(num, sizeof num, "%u", gref);
    xs_write("gref", num);
    snprintf(num, sizeof num, "%d", port);
    xs_write("port", num);
    xs_write("request", "go");
    info("dom %d: gref %u port %d, request=go written", domid, gref, port);
    double t0 = now();

    /* Step 3: Ferrite's event, then the page contents and its verdict. */
    int got = evtchn_wait(ev, 30.0);
    double t_event = now() - t0;
    char grant_val[256] = "";
    if (xs_wait("grant", grant_val, sizeof grant_val, got >= 0 ? 5.0 : 1.0) != 0)
        strcpy(grant_val, "<absent>");
    int bytes_ok = memcmp((const void *)page, "ferrite!", 8) == 0;
    long bad = first_mismatch((const uint8_t *)page, pattern_dom0, 8);
    if (strcmp(grant_val, "ok") == 0 && bytes_ok && bad < 0) {
        result("grant-map", 1, "gref %u: guest wrote grant=ok and 'ferrite!' at offset 0, rest of page intact", gref);
    } else {
        char head[40];
        int n = 0;
        for (int i = 0; i < 8; i++)
            n += snprintf(head + n, sizeof head - n, "%02x", page[i]);
        pass = 0;
        result("grant-map", 0, "gref %u: grant='%s' (expected 'ok'); page[0..8]=%s (expected 6665727269746521 'ferrite!')%s%s",
               gref, grant_val, head, bad >= 0 ? "; bytes 8.. changed at " : "", bad >= 0 ? (snprintf(num, sizeof num, "%ld", bad), num) : "");
    }

    if (got < 0) {
        char ev_val[256] = "<absent>";
        xs_read("evtchn", ev_val, sizeof ev_val);
        result("evtchn", 0, "no event from dom %d on port %d within 30 s (evtchn='%s')", domid, port, ev_val);
        return 0;
    }
    if (got != port) {
        result("evtchn", 0, "event arrived on port %d, expected %d", got, port);
        return 0;
    }
    struct ioctl_evtchn_notify notify = { .port = (unsigned)port };
    if (ioctl(ev, IOCTL_EVTCHN_NOTIFY, &notify) != 0) {
        result("evtchn", 0, "IOCTL_EVTCHN_NOTIFY port %d: %s", port, strerror(errno));
        return 0;
    }
    char ev_val[256];
    double end = now() + 25.0;
    do {
        if (xs_read("evtchn", ev_val, sizeof ev_val) != 0)
            strcpy(ev_val, "<absent>");
        if (strcmp(ev_val, "ok") == 0 || strncmp(ev_val, "fail", 4) == 0)
            break;
        usleep(100 * 1000);
    } while (now() < end);
    if (strcmp(ev_val, "ok") == 0) {
        result("evtchn", 1, "port %d: event from guest after %.1f s, guest saw ours (evtchn=ok)", port, t_event);
    } else {
        pass = 0;
        result("evtchn", 0, "port %d: got guest's event after %.1f s and notified back, but evtchn='%s' (expected 'ok')",
               port, t_event, ev_val);
    }
    /* The gntalloc page stays granted until the fd closes, which is at exit. */
    return pass;
}

/* ------------------------------------------- guest side (Linux stand-in) */

static int run_peer(void)
{
    char val[256];
    strcpy(prefix, "data/ferrite/test/");

    /* Our page for dom0 (test 4) before we say ready. */
    int ga = open("/dev/xen/gntalloc", O_RDWR);
    struct ioctl_gntalloc_alloc_gref alloc;
    memset(&alloc, 0, sizeof alloc);
    alloc.domid = 0;
    alloc.count = 1;
    info("peer: start");
    if (ga < 0 || ioctl(ga, IOCTL_GNTALLOC_ALLOC_GREF, &alloc) != 0) {
        info("peer: gntalloc failed: %s", strerror(errno));
        return 1;
    }
    uint8_t *own = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, ga, (off_t)alloc.index);
    if (own == MAP_FAILED)
        return 1;
    info("peer: own page gref %u mapped at %p", alloc.gref_ids[0], (void *)own);
    for (unsigned i = 0; i < PAGE; i++)
        own[i] = pattern_guest(i);
    snprintf(val, sizeof val, "%u", alloc.gref_ids[0]);
    xs_write("our-gref", val);
    prefix[0] = 0;
    xs_write("data/ferrite/state", "ready");
    strcpy(prefix, "data/ferrite/test/");
    printf("ferrite: ready\n");
    fflush(stdout);

    if (xs_wait("request", val, sizeof val, 120.0) != 0 || strcmp(val, "go") != 0) {
        info("peer: no request=go");
        return 1;
    }
    info("peer: request=go");
    char gref_s[32], port_s[32];
    xs_read("gref", gref_s, sizeof gref_s);
    xs_read("port", port_s, sizeof port_s);

    int gd = open("/dev/xen/gntdev", O_RDWR);
    struct ioctl_gntdev_map_grant_ref map;
    memset(&map, 0, sizeof map);
    map.count = 1;
    map.refs[0].domid = 0;
    map.refs[0].ref = (uint32_t)strtoul(gref_s, NULL, 10);
    const char *verdict = "ok";
    char why[128];
    if (gd < 0 || ioctl(gd, IOCTL_GNTDEV_MAP_GRANT_REF, &map) != 0) {
        snprintf(why, sizeof why, "fail: map: %s", strerror(errno));
        verdict = why;
    } else {
        uint8_t *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, gd, (off_t)map.index);
        if (p == MAP_FAILED) {
            snprintf(why, sizeof why, "fail: mmap: %s", strerror(errno));
            verdict = why;
        } else {
            long bad = first_mismatch(p, pattern_dom0, 0);
            if (bad >= 0) {
                snprintf(why, sizeof why, "fail: byte %ld is %u", bad, p[bad]);
                verdict = why;
            } else {
                memcpy(p, "ferrite!", 8);
            }
            munmap(p, PAGE);
        }
        struct ioctl_gntdev_unmap_grant_ref unmap = { .index = map.index, .count = 1 };
        ioctl(gd, IOCTL_GNTDEV_UNMAP_GRANT_REF, &unmap);
    }
    xs_write("grant", verdict);

    int ev = open("/dev/xen/evtchn", O_RDWR);
    struct ioctl_evtchn_bind_interdomain bi = { .remote_domain = 0, .remote_port = (unsigned)atoi(port_s) };
    int lport = ev < 0 ? -1 : ioctl(ev, IOCTL_EVTCHN_BIND_INTERDOMAIN, &bi);
    if (lport < 0) {
        snprintf(why, sizeof why, "fail: bind_interdomain: %s", strerror(errno));
        xs_write("evtchn", why);
        return 1;
    }
    struct ioctl_evtchn_notify notify = { .port = (unsigned)lport };
    ioctl(ev, IOCTL_EVTCHN_NOTIFY, &notify);
    xs_write("evtchn", evtchn_wait(ev, 20.0) == lport ? "ok" : "fail: no event from dom0 within 20 s");
    pause(); /* keep the grant alive until we are shut down */
    return 0;
}

/* PV-IOMMU (hypercall 43): sub-op numbers and struct pv_iommu_capabilities
 * as in /work/shared/pv-iommu-abi.md (crates/pv-iommu-abi). */
#define HYPERCALL_IOMMU_OP 43
#define IOMMU_QUERY_CAPABILITIES 1

static const char *errno_name(long e)
{
    switch (e) {
    case 0: return "OK";
    case 1: return "EPERM";
    case 2: return "ENOENT";
    case 5: return "EIO";
    case 12: return "ENOMEM";
    case 13: return "EACCES";
    case 14: return "EFAULT";
    case 16: return "EBUSY";
    case 19: return "ENODEV";
    case 22: return "EINVAL";
    case 28: return "ENOSPC";
    case 38: return "ENOSYS";
    case 95: return "EOPNOTSUPP";
    case 98: return "EADDRINUSE";
    case 99: return "EADDRNOTAVAIL";
    default: return "E?";
    }
}

static int privcmd_open(void)
{
    int fd = open("/dev/xen/privcmd", O_RDWR);
    if (fd < 0)
        fd = open("/proc/xen/privcmd", O_RDWR);
    return fd;
}

/* One hypercall through privcmd: its result, or -errno. */
static long hypercall(int fd, uint64_t op, uint64_t a0, uint64_t a1)
{
    struct privcmd_hypercall h = { .op = op, .arg = { a0, a1 } };
    long r = ioctl(fd, IOCTL_PRIVCMD_HYPERCALL, &h);
    return r < 0 ? -errno : r;
}

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* "SSSS:BB:DD.F" → seg, bus, devfn; 0 on success. */
static int parse_sbdf(const char *s, uint16_t *seg, uint8_t *bus, uint8_t *devfn)
{
    unsigned a, b, d, f;
    if (sscanf(s, "%x:%x:%x.%x", &a, &b, &d, &f) != 4 || a > 0xffff || b > 0xff || d > 31 || f > 7)
        return -1;
    *seg = a;
    *bus = b;
    *devfn = (d << 3) | f;
    return 0;
}

/*
 * Field=value arguments into the sub-op's structure (pv-iommu-abi.md):
 * init (2) max_ctx order; alloc (3) flags; free (4) ctx flags; reattach (5) ctx dev=SSSS:BB:DD.F;
 * map (6) ctx gfn dfn flags nr (4 KiB pages); unmap (7) ctx dfn nr.
 * Returns 0, or -1 for an unknown field or sub-op.
 */
static int fill_fields(unsigned long subop, uint8_t *arg, int n, char **kv)
{
    if (subop == 6) { /* map_pages: page size 4 KiB unless told */
        put32(arg + 28, 4096);
    } else if (subop == 7) {
        put32(arg + 16, 4096);
    }
    for (int i = 0; i < n; i++) {
        char key[32];
        const char *eq = strchr(kv[i], '=');
        if (!eq || eq - kv[i] >= (long)sizeof key)
            return -1;
        memcpy(key, kv[i], eq - kv[i]);
        key[eq - kv[i]] = 0;
        const char *val = eq + 1;
        uint64_t v = strtoull(val, NULL, 0);
        if (strcmp(key, "max_ctx") == 0 && subop == 2)
            put32(arg + 0, v);
        else if (strcmp(key, "order") == 0 && subop == 2)
            put32(arg + 4, v);
        else if (strcmp(key, "ctx") == 0 && subop >= 4 && subop <= 7)
            put16(arg + 0, v);
        else if (strcmp(key, "flags") == 0 && (subop == 3 || subop == 4))
            put32(arg + 4, v);
        else if (strcmp(key, "dev") == 0 && subop == 5) {
            uint16_t seg;
            uint8_t bus, devfn;
            if (parse_sbdf(val, &seg, &bus, &devfn))
                return -1;
            put16(arg + 2, seg);
            arg[4] = bus;
            arg[5] = devfn;
        } else if (strcmp(key, "gfn") == 0 && subop == 6)
            put64(arg + 8, v);
        else if (strcmp(key, "dfn") == 0 && subop == 6)
            put64(arg + 16, v);
        else if (strcmp(key, "dfn") == 0 && subop == 7)
            put64(arg + 8, v);
        else if (strcmp(key, "flags") == 0 && subop == 6)
            put32(arg + 24, v);
        else if (strcmp(key, "nr") == 0 && subop == 6)
            put32(arg + 32, v);
        else if (strcmp(key, "nr") == 0 && subop == 7)
            put32(arg + 20, v);
        else
            return -1;
    }
    return 0;
}

static int run_iommu_op(unsigned long subop, int nargs, char **args)
{
    int fd = privcmd_open();
    if (fd < 0) {
        printf("LAB-IOMMU op=%lu error=open-privcmd:%s\n", subop, strerror(errno));
        return 2;
    }
    /* One locked page: Xen copies the argument straight from this address. */
    uint8_t *arg = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
    if (arg == MAP_FAILED) {
        printf("LAB-IOMMU op=%lu error=mmap:%s\n", subop, strerror(errno));
        return 2;
    }
    memset(arg, 0, PAGE);
    /* ADDR (a hostile pointer) or field=value arguments. */
    const char *addr = nargs == 1 && !strchr(args[0], '=') ? args[0] : NULL;
    if (!addr && fill_fields(subop, arg, nargs, args)) {
        printf("LAB-IOMMU op=%lu error=bad-fields\n", subop);
        return 2;
    }
    uint64_t where = addr ? strtoull(addr, NULL, 0) : (uintptr_t)arg;
    long r = hypercall(fd, HYPERCALL_IOMMU_OP, subop, where);
    long e = r < 0 ? -r : 0;
    printf("LAB-IOMMU op=%lu rc=%ld errno=%s", subop, r < 0 ? -e : r, errno_name(e));
    if (addr)
        printf(" arg=0x%llx", (unsigned long long)where);
    if (r == 0 && subop == IOMMU_QUERY_CAPABILITIES && !addr) {
        uint64_t max_iova;
        uint32_t flags, pgsize, max_pasid;
        uint16_t max_ctx;
        memcpy(&max_iova, arg + 0, 8);
        memcpy(&flags, arg + 8, 4);
        memcpy(&pgsize, arg + 12, 4);
        memcpy(&max_pasid, arg + 16, 4);
        memcpy(&max_ctx, arg + 20, 2);
        printf(" max_iova=0x%llx cap_flags=0x%x pgsize_mask=0x%x max_pasid=%u max_ctx_no=%u",
               (unsigned long long)max_iova, flags, pgsize, max_pasid, max_ctx);
    }
    if (!addr && subop == 3)
        printf(" ctx=%u", get16(arg));
    if (!addr && subop == 6)
        printf(" mapped=%u", get32(arg + 36));
    if (!addr && subop == 7)
        printf(" unmapped=%u", get32(arg + 24));
    printf("\n");
    fflush(stdout);
    close(fd);
    return 0;
}

/*
 * Pages of dom0's own that Linux does not use, for PV-IOMMU map tests: dom0's
 * maximum reservation is raised by N pages (XEN_DOMCTL_max_mem) and Xen gives
 * it N new pages (XENMEM_increase_reservation); a PV domain names them by
 * machine frame. "labtool release-pages MFN..." gives them back and lowers
 * the maximum again.
 */
#define HYPERCALL_MEMORY_OP 12
#define HYPERCALL_DOMCTL 36
#define XEN_DOMCTL_INTERFACE_VERSION 0x15
#define XEN_DOMCTL_getdomaininfo 5
#define XEN_DOMCTL_max_mem 11
#define XENMEM_increase_reservation 0
#define XENMEM_decrease_reservation 1
#define DOMID_SELF 0x7ff0

/* dom0's max_pages (getdomaininfo: the union at 16, max_pages at +16), or -errno. */
static long dom0_max_pages(int fd, uint8_t *buf)
{
    memset(buf, 0, PAGE);
    put32(buf + 0, XEN_DOMCTL_getdomaininfo);
    put32(buf + 4, XEN_DOMCTL_INTERFACE_VERSION);
    put16(buf + 8, 0);
    long r = hypercall(fd, HYPERCALL_DOMCTL, (uintptr_t)buf, 0);
    return r < 0 ? r : (long)get64(buf + 16 + 16);
}

static long dom0_set_max_pages(int fd, uint8_t *buf, uint64_t pages)
{
    memset(buf, 0, PAGE);
    put32(buf + 0, XEN_DOMCTL_max_mem);
    put32(buf + 4, XEN_DOMCTL_INTERFACE_VERSION);
    put16(buf + 8, 0);
    put64(buf + 16, pages * 4); /* KiB */
    return hypercall(fd, HYPERCALL_DOMCTL, (uintptr_t)buf, 0);
}

/* struct xen_memory_reservation: extent_start @0, nr_extents @8, extent_order @16, mem_flags @20, domid @24. */
static long reservation(int fd, uint8_t *buf, int op, uint64_t *mfns, unsigned n)
{
    uint8_t *res = buf + 2048;
    memset(res, 0, 32);
    put64(res + 0, (uintptr_t)mfns);
    put64(res + 8, n);
    put16(res + 24, DOMID_SELF);
    return hypercall(fd, HYPERCALL_MEMORY_OP, op, (uintptr_t)res);
}

static int run_pages(int release, int n, char **args)
{
    int fd = privcmd_open();
    uint8_t *buf = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
    if (fd < 0 || buf == MAP_FAILED) {
        printf("LAB-PAGES error=%s\n", strerror(errno));
        return 2;
    }
    uint64_t *mfns = (uint64_t *)(buf + PAGE);
    unsigned count = release ? (unsigned)n : (unsigned)strtoul(args[0], NULL, 0);
    if (count == 0 || count > 64) {
        printf("LAB-PAGES error=count\n");
        return 2;
    }
    long max = dom0_max_pages(fd, buf);
    /* A domU may not use domctls (EPERM): it takes pages within the headroom
     * its toolstack left (xl's maxmem above memory) and leaves max_pages alone. */
    int domu = max == -1 /* EPERM */ || max == -13 /* EACCES */;
    if (max < 0 && !domu) {
        printf("LAB-PAGES error=getdomaininfo:%s\n", errno_name(-max));
        return 2;
    }
    if (release) {
        for (unsigned i = 0; i < count; i++)
            mfns[i] = strtoull(args[i], NULL, 0);
        long r = reservation(fd, buf, XENMEM_decrease_reservation, mfns, count);
        if (domu) {
            printf("LAB-PAGES released=%ld max_pages=unchanged\n", r);
            return r == (long)count ? 0 : 1;
        }
        long m = r == (long)count ? dom0_set_max_pages(fd, buf, max - count) : 0;
        printf("LAB-PAGES released=%ld max_pages=%ld->%ld rc=%ld\n", r, max, max - (r == (long)count ? count : 0), m);
        return r == (long)count && m == 0 ? 0 : 1;
    }
    long m = domu ? 0 : dom0_set_max_pages(fd, buf, max + count);
    if (m < 0) {
        printf("LAB-PAGES error=max_mem:%s\n", errno_name(-m));
        return 1;
    }
    long r = reservation(fd, buf, XENMEM_increase_reservation, mfns, count);
    if (domu)
        printf("LAB-PAGES got=%ld max_pages=unchanged mfns=", r);
    else
        printf("LAB-PAGES got=%ld max_pages=%ld->%ld mfns=", r, max, max + count);
    for (long i = 0; i < r; i++)
        printf("%s0x%llx", i ? "," : "", (unsigned long long)mfns[i]);
    printf("\n");
    return r == (long)count ? 0 : 1;
}

/*
 * A minimal NVMe admin path from dom0 userspace, for PV-IOMMU DMA tests: the
 * controller (unbound from Linux's driver) gets its admin queues at bus
 * addresses the test chose (IOVAs of a PV-IOMMU context) and runs Identify
 * Controller commands whose data lands at other chosen bus addresses. The
 * pages behind them are dom0's own (labtool own-pages), mapped here by
 * machine frame through privcmd so the CPU side can fill and check them.
 *
 *   labtool nvme-identify SBDF SQ=IOVA:MFN CQ=IOVA:MFN DATA=IOVA[:MFN]...
 *
 * One Identify per DATA, in order; for each, one line
 *   LAB-NVME cmd=N data=IOVA status=0xS [serial=...] [page=unchanged|written]
 * (status -1: no completion within 5 s; the controller is disabled at the end).
 */
struct privcmd_mmapbatch_v2 {
    unsigned int num;
    domid_t dom;
    uint64_t addr;
    const uint64_t *arr;
    int *err;
};
#define IOCTL_PRIVCMD_MMAPBATCH_V2 _IOC(_IOC_NONE, 'P', 4, sizeof(struct privcmd_mmapbatch_v2))

/* dom0's own machine frame, mapped read-write into this process. */
static uint8_t *map_own_mfn(int fd, uint64_t mfn)
{
    uint8_t *va = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (va == MAP_FAILED)
        return NULL;
    int err = 0;
    struct privcmd_mmapbatch_v2 b = { .num = 1, .dom = 0x7ff0 /* DOMID_SELF */, .addr = (uintptr_t)va, .arr = &mfn, .err = &err };
    if (ioctl(fd, IOCTL_PRIVCMD_MMAPBATCH_V2, &b) < 0 || err) {
        munmap(va, PAGE);
        return NULL;
    }
    return va;
}

static volatile uint8_t *nvme_bar;
static uint32_t rd32(unsigned off) { return *(volatile uint32_t *)(nvme_bar + off); }
static uint64_t rd64(unsigned off) { return rd32(off) | (uint64_t)rd32(off + 4) << 32; }
static void wr32(unsigned off, uint32_t v) { __sync_synchronize(); *(volatile uint32_t *)(nvme_bar + off) = v; }
static void wr64(unsigned off, uint64_t v) { wr32(off, (uint32_t)v); wr32(off + 4, v >> 32); }

/* Wait up to `secs` for CSTS.RDY == rdy (or CSTS.CFS); 0 if reached. */
static int nvme_wait_rdy(int rdy, double secs)
{
    double end = now() + secs;
    while (now() < end) {
        uint32_t c = rd32(0x1c);
        if (c & 2)
            return -2;
        if ((c & 1) == (uint32_t)rdy)
            return 0;
        usleep(1000);
    }
    return -1;
}

static int parse_iova_mfn(const char *s, uint64_t *iova, uint64_t *mfn)
{
    char *end;
    *iova = strtoull(s, &end, 0);
    *mfn = 0;
    if (*end == ':')
        *mfn = strtoull(end + 1, &end, 0);
    return *end ? -1 : 0;
}

static int run_nvme_identify(int argc, char **argv)
{
    char path[128], cfg[128];
    uint64_t sq_iova = 0, sq_mfn = 0, cq_iova = 0, cq_mfn = 0, data_iova[8], data_mfn[8];
    int ndata = 0;
    for (int i = 1; i < argc; i++) {
        uint64_t a, m;
        const char *v = strchr(argv[i], '=');
        if (!v || parse_iova_mfn(v + 1, &a, &m)) {
            printf("LAB-NVME error=bad-arg:%s\n", argv[i]);
            return 2;
        }
        if (strncmp(argv[i], "SQ=", 3) == 0) { sq_iova = a; sq_mfn = m; }
        else if (strncmp(argv[i], "CQ=", 3) == 0) { cq_iova = a; cq_mfn = m; }
        else if (strncmp(argv[i], "DATA=", 5) == 0 && ndata < 8) { data_iova[ndata] = a; data_mfn[ndata++] = m; }
    }
    if (!sq_mfn || !cq_mfn || !ndata) {
        printf("LAB-NVME error=need-SQ-CQ-DATA\n");
        return 2;
    }
    int fd = privcmd_open();
    uint8_t *sq = fd >= 0 ? map_own_mfn(fd, sq_mfn) : NULL;
    uint8_t *cq = fd >= 0 ? map_own_mfn(fd, cq_mfn) : NULL;
    if (!sq || !cq) {
        printf("LAB-NVME error=map-queues:%s\n", strerror(errno));
        return 2;
    }
    uint8_t *data[8] = { 0 };
    for (int i = 0; i < ndata; i++)
        if (data_mfn[i] && !(data[i] = map_own_mfn(fd, data_mfn[i]))) {
            printf("LAB-NVME error=map-data:%s\n", strerror(errno));
            return 2;
        }
    /* Memory space and bus mastering on (the PCI command register). */
    snprintf(cfg, sizeof cfg, "/sys/bus/pci/devices/%s/config", argv[0]);
    int cf = open(cfg, O_RDWR);
    uint16_t cmd = 0;
    if (cf < 0 || pread(cf, &cmd, 2, 4) != 2) {
        printf("LAB-NVME error=config:%s\n", strerror(errno));
        return 2;
    }
    cmd |= 0x6;
    if (pwrite(cf, &cmd, 2, 4) != 2) {
        printf("LAB-NVME error=config-write:%s\n", strerror(errno));
        return 2;
    }
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/resource0", argv[0]);
    int bf = open(path, O_RDWR | O_SYNC);
    nvme_bar = bf >= 0 ? mmap(NULL, 0x2000, PROT_READ | PROT_WRITE, MAP_SHARED, bf, 0) : MAP_FAILED;
    if (nvme_bar == MAP_FAILED) {
        printf("LAB-NVME error=bar:%s\n", strerror(errno));
        return 2;
    }
    uint64_t cap = rd64(0);
    unsigned dstrd = 4u << ((cap >> 32) & 0xf);
    double to = ((cap >> 24) & 0xff) * 0.5 + 1;
    wr32(0x14, 0); /* CC.EN = 0: reset */
    if (nvme_wait_rdy(0, to)) {
        printf("LAB-NVME error=reset-timeout csts=0x%x\n", rd32(0x1c));
        return 1;
    }
    memset(sq, 0, PAGE);
    memset(cq, 0, PAGE);
    wr32(0x24, (15u << 16) | 15u); /* 16 entries each */
    wr64(0x28, sq_iova);
    wr64(0x30, cq_iova);
    wr32(0x14, 1u | (6u << 16) | (4u << 20)); /* EN, 4 KiB pages, 64/16-byte entries */
    if (nvme_wait_rdy(1, to)) {
        printf("LAB-NVME error=enable csts=0x%x\n", rd32(0x1c));
        return 1;
    }
    int rc = 0;
    for (int i = 0; i < ndata; i++) {
        if (data[i])
            for (unsigned k = 0; k < PAGE; k++)
                data[i][k] = pattern_dom0(k);
        uint8_t *e = sq + i * 64;
        memset(e, 0, 64);
        put32(e + 0, 0x06 | ((uint32_t)(i + 1) << 16)); /* Identify, cid */
        put64(e + 24, data_iova[i]);                    /* PRP1 */
        put32(e + 40, 1);                               /* CNS 1: controller */
        wr32(0x1000, i + 1);                            /* SQ 0 tail */
        double end = now() + 5;
        long status = -1;
        volatile uint8_t *c = cq + i * 16;
        while (now() < end) {
            uint32_t dw3 = *(volatile uint32_t *)(c + 12);
            if (dw3 & 0x10000) {
                status = (dw3 >> 17) & 0x7fff;
                break;
            }
            if (rd32(0x1c) & 2)
                break;
            usleep(1000);
        }
        wr32(0x1000 + dstrd, i + 1); /* CQ 0 head */
        /* The unit records one fault at a time (QEMU: one fault recording
         * register): a second fault before Xen's handler cleared the first
         * would be dropped as an overflow. Give the handler time. */
        usleep(500 * 1000);
        printf("LAB-NVME cmd=%d data=0x%llx status=%ld csts=0x%x", i + 1, (unsigned long long)data_iova[i], status, rd32(0x1c));
        if (data[i]) {
            if (first_mismatch(data[i], pattern_dom0, 0) < 0)
                printf(" page=unchanged");
            else {
                char serial[21];
                memcpy(serial, data[i] + 4, 20);
                serial[20] = 0;
                for (int k = 19; k >= 0 && serial[k] == ' '; k--)
                    serial[k] = 0;
                printf(" page=written serial=%s", serial);
            }
        }
        printf("\n");
        fflush(stdout);
        if (status < 0) {
            rc = 1;
            break;
        }
    }
    wr32(0x14, 0); /* disable: the controller lets go of the queues */
    nvme_wait_rdy(0, to);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "iommu-op") == 0)
        return run_iommu_op(strtoul(argv[2], NULL, 0), argc - 3, argv + 3);
    if (argc == 3 && strcmp(argv[1], "own-pages") == 0)
        return run_pages(0, 1, argv + 2);
    if (argc >= 4 && strcmp(argv[1], "nvme-identify") == 0)
        return run_nvme_identify(argc - 2, argv + 2);
    if (argc >= 3 && strcmp(argv[1], "release-pages") == 0)
        return run_pages(1, argc - 2, argv + 2);
    if (argc == 3 && strcmp(argv[1], "dom0") == 0)
        return run_dom0(atoi(argv[2])) ? 0 : 1;
    if (argc == 2 && strcmp(argv[1], "peer") == 0)
        return run_peer();
    fprintf(stderr, "usage: labtool dom0 DOMID | labtool peer | labtool iommu-op SUBOP [ADDR | FIELD=VALUE...]\n"
                    "       labtool own-pages N | labtool release-pages MFN... | labtool nvme-identify SBDF SQ=.. CQ=.. DATA=..\n");
    return 2;
}
