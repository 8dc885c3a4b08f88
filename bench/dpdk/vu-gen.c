/* vu-gen: a DPDK virtio-user guest for bench/vhost.sh (driven by tests/src/bin/bench-vhost.rs).
 *
 * Two net_virtio_user ports on one lcore: port 0 ("A") transmits untagged IPv4/UDP frames
 * from 02:00:00:00:00:0a to 02:00:00:00:00:0b, port 1 ("B") receives them back from the
 * vhost-user backend under test. Before measuring, both MACs are announced so a learning
 * switch forwards instead of flooding. Every run prints one JSON line to stdout:
 *
 *   {"run":0,"secs":3.000,"tx_try":..,"tx_ok":..,"tx_full":..,"rx":..,"rx_bytes":..}
 *
 * tx_full = tx_try - tx_ok: frames the TX ring refused (ring full: the backend did not keep
 * up). Warm-up is announced with {"event":"start"} before the first run.
 *
 * The frames are sent the way a real DPDK application sends them: each burst is allocated
 * from a mempool with refcnt 1 and handed to rte_eth_tx_burst, so the virtio PMD may push the
 * virtio-net header into the headroom (one descriptor per frame). To avoid a memcpy per
 * frame, every mbuf of the TX pool is filled with the frame once at start-up; after
 * allocation only the lengths are set. Received frames are freed in bulk.
 *
 *   vu-gen [EAL args] -- --a PATH --b PATH [--server 0|1] [--in-order 0|1|default]
 *          [--size BYTES] [--runs N] [--secs S] [--warm S] [--timeout S] [--sync]
 *
 * --size counts the 4-byte FCS (a 64-byte frame is 60 bytes in the mbuf). --server 1 makes
 * the ports vhost-user servers (for a backend that is a vhost-user client, such as OVS
 * dpdkvhostuserclient ports); a stale socket file at the path is removed first. --timeout:
 * how long a port may take to come up (default 30 s). --sync (for instruction counting):
 * before each run print {"event":"ready"} and wait, draining only, for SIGUSR1; after each
 * run stop transmitting and keep receiving until every accepted frame has come back (or
 * nothing arrived for 1 s), counting those frames in the run; after the last one print
 * {"event":"done"} and wait for SIGUSR1 again before closing the ports.
 *
 * EAL arguments that work with vhost-user backends (they need the guest memory as a
 * shareable file, few regions): -l 0 --in-memory --single-file-segments -m 256
 * --file-prefix vmnetd-vugen --no-pci --no-telemetry
 */
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rte_cycles.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_malloc.h>
#include <rte_mempool.h>

#define BURST 32
#define RING 1024
#define POOL_MBUFS 8191
#define POOL_CACHE 256
#define MAX_FRAME 9000

static const uint8_t MAC_A[6] = {0x02, 0, 0, 0, 0, 0x0a};
static const uint8_t MAC_B[6] = {0x02, 0, 0, 0, 0, 0x0b};

static volatile sig_atomic_t looping; /* set once both ports are up */
static volatile sig_atomic_t stop;
static volatile sig_atomic_t go;

/* Removed on any exit: DPDK's (empty) runtime dir, and the sockets we listen on. */
static char rundir[PATH_MAX];
static const char *listening[2];

static void tidy(void)
{
	int i;

	for (i = 0; i < 2; i++)
		if (listening[i])
			unlink(listening[i]);
	if (rundir[0])
		rmdir(rundir);
}

struct counts {
	uint64_t tx_try, tx_ok, rx, rx_bytes;
	double secs;
};

struct gen {
	uint16_t port_a, port_b;
	struct rte_mempool *tx_pool, *rx_pool;
	uint8_t frame[MAX_FRAME];
	uint16_t len; /* bytes in the mbuf (no FCS) */
	struct rte_mbuf *pending[BURST]; /* allocated, refused by a full ring, sent next */
	unsigned int npending;
};

static void on_alarm(int sig)
{
	static const char msg[] = "vu-gen: a port did not come up in time (is the backend listening/connecting?)\n";
	(void)sig;
	if (write(2, msg, sizeof(msg) - 1) < 0) {
		/* nothing left to do */
	}
	tidy();
	_exit(3);
}

static void on_term(int sig)
{
	(void)sig;
	if (!looping) {
		tidy(); /* maybe blocked in accept() or connect retries: nothing else to clean */
		_exit(1);
	}
	stop = 1;
}

static void on_usr1(int sig)
{
	(void)sig;
	go = 1;
}

static void die(const char *fmt, const char *arg, int err)
{
	fprintf(stderr, "vu-gen: ");
	fprintf(stderr, fmt, arg);
	if (err)
		fprintf(stderr, ": %s", rte_strerror(err));
	fprintf(stderr, "\n");
	tidy();
	exit(2);
}

/* An Ethernet/IPv4/UDP frame of len bytes (no FCS), as bench-vhost's frame(). */
static void build_frame(uint8_t *f, const uint8_t *src, const uint8_t *dst, uint16_t len)
{
	uint32_t sum = 0;
	uint16_t ip_len = len - 14, udp_len = ip_len - 20, v;
	uint8_t *ip = f + 14;
	int i;

	memset(f, 0, len);
	memcpy(f, dst, 6);
	memcpy(f + 6, src, 6);
	f[12] = 0x08;
	f[13] = 0x00;
	ip[0] = 0x45;
	ip[2] = ip_len >> 8;
	ip[3] = ip_len & 0xff;
	ip[8] = 64;
	ip[9] = 17;
	ip[12] = 10, ip[15] = 1;
	ip[16] = 10, ip[19] = 2;
	for (i = 0; i < 20; i += 2)
		sum += (uint32_t)ip[i] << 8 | ip[i + 1];
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	v = ~sum & 0xffff;
	ip[10] = v >> 8;
	ip[11] = v & 0xff;
	f[34] = 1234 >> 8, f[35] = 1234 & 0xff;
	f[36] = 5678 >> 8, f[37] = 5678 & 0xff;
	f[38] = udp_len >> 8, f[39] = udp_len & 0xff;
}

/* rte_mempool_obj_iter callback: writes the frame where a freshly allocated mbuf's data
 * starts (data_off is reset to the headroom on allocation). */
static void prefill(struct rte_mempool *mp, void *opaque, void *obj, unsigned int idx)
{
	struct gen *g = opaque;
	struct rte_mbuf *m = obj;
	(void)mp;
	(void)idx;
	memcpy((char *)m->buf_addr + RTE_PKTMBUF_HEADROOM, g->frame, g->len);
}

static int socket_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

/* Probes net_virtio_userN on path; as a client it waits for the socket and retries. */
static uint16_t add_port(int n, const char *path, int server, const char *in_order, double timeout)
{
	char name[32], devargs[4200];
	uint16_t port;
	uint64_t end = rte_get_timer_cycles() + (uint64_t)(timeout * rte_get_timer_hz());
	int ret;

	snprintf(name, sizeof(name), "net_virtio_user%d", n);
	ret = snprintf(devargs, sizeof(devargs), "%s,path=%s,queues=1,queue_size=%d,server=%d,mrg_rxbuf=1%s%s",
		       name, path, RING, server, strcmp(in_order, "default") ? ",in_order=" : "",
		       strcmp(in_order, "default") ? in_order : "");
	if (ret < 0 || (size_t)ret >= sizeof(devargs))
		die("socket path too long: %s", path, 0);
	if (server) {
		/* Our socket: a stale file from an earlier run would make bind() fail. */
		unlink(path);
		listening[n] = path;
	}
	for (;;) {
		ret = -1;
		if (server || socket_exists(path)) {
			/* A server blocks in accept() until the backend connects (the alarm
			 * bounds it); a client connects at once or fails (nobody listening
			 * yet: retried). */
			ret = rte_dev_probe(devargs);
			if (ret == 0)
				break;
		}
		if (server || rte_get_timer_cycles() > end)
			die(server ? "cannot bring up the virtio-user port on %s (see DPDK's messages above)"
				   : "cannot connect the virtio-user port to %s within the timeout "
				     "(is the backend listening?)",
			    path, ret < -1 ? -ret : 0);
		usleep(200 * 1000);
	}
	if (rte_eth_dev_get_port_by_name(name, &port) != 0)
		die("no ethdev for %s", name, 0);
	fprintf(stderr, "vu-gen: port %u is %s\n", port, devargs);
	return port;
}

static void start_port(uint16_t port, struct rte_mempool *rx_pool)
{
	struct rte_eth_conf conf;
	int socket = rte_eth_dev_socket_id(port), ret;
	char p[8];

	snprintf(p, sizeof(p), "%u", port);
	memset(&conf, 0, sizeof(conf));
	if ((ret = rte_eth_dev_configure(port, 1, 1, &conf)) < 0)
		die("port %s: configure", p, -ret);
	if ((ret = rte_eth_rx_queue_setup(port, 0, RING, socket < 0 ? 0 : socket, NULL, rx_pool)) < 0)
		die("port %s: RX queue", p, -ret);
	if ((ret = rte_eth_tx_queue_setup(port, 0, RING, socket < 0 ? 0 : socket, NULL)) < 0)
		die("port %s: TX queue", p, -ret);
	if ((ret = rte_eth_dev_start(port)) < 0)
		die("port %s: start", p, -ret);
}

static void wait_link(uint16_t port, double timeout)
{
	struct rte_eth_link link;
	uint64_t end = rte_get_timer_cycles() + (uint64_t)(timeout * rte_get_timer_hz());
	char p[8];

	snprintf(p, sizeof(p), "%u", port);
	for (;;) {
		memset(&link, 0, sizeof(link));
		if (rte_eth_link_get_nowait(port, &link) == 0 && link.link_status == RTE_ETH_LINK_UP)
			return;
		if (rte_get_timer_cycles() > end)
			die("port %s: link did not come up", p, 0);
		if (stop)
			exit(1);
		usleep(10 * 1000);
	}
}

static void drain(struct gen *g, struct counts *c)
{
	struct rte_mbuf *rx[BURST];
	uint16_t n, i;

	n = rte_eth_rx_burst(g->port_b, 0, rx, BURST);
	if (n == 0)
		return;
	c->rx += n;
	for (i = 0; i < n; i++)
		c->rx_bytes += rx[i]->pkt_len;
	rte_pktmbuf_free_bulk(rx, n);
}

/* Drains port A too (frames forwarded back to it, e.g. by the learn phase). */
static void drain_a(struct gen *g)
{
	struct rte_mbuf *rx[BURST];
	uint16_t n;

	while ((n = rte_eth_rx_burst(g->port_a, 0, rx, BURST)) > 0)
		rte_pktmbuf_free_bulk(rx, n);
}

/* A few frames each way so a learning switch knows both MACs. */
static void learn(struct gen *g)
{
	struct counts scratch;
	uint8_t f[60];
	int round, i, k;

	memset(&scratch, 0, sizeof(scratch));
	for (round = 0; round < 3; round++) {
		for (k = 0; k < 2; k++) {
			uint16_t port = k == 0 ? g->port_b : g->port_a;
			struct rte_mbuf *m[4];
			uint16_t sent;

			build_frame(f, k == 0 ? MAC_B : MAC_A, k == 0 ? MAC_A : MAC_B, sizeof(f));
			if (rte_pktmbuf_alloc_bulk(g->rx_pool, m, 4) != 0)
				die("%s", "out of mbufs in the learn phase", 0);
			for (i = 0; i < 4; i++) {
				memcpy(rte_pktmbuf_mtod(m[i], void *), f, sizeof(f));
				m[i]->data_len = m[i]->pkt_len = sizeof(f);
			}
			sent = rte_eth_tx_burst(port, 0, m, 4);
			if (sent < 4)
				rte_pktmbuf_free_bulk(m + sent, 4 - sent);
		}
		rte_delay_us_sleep(50 * 1000);
		drain(g, &scratch);
		drain_a(g);
	}
}

/* One burst into port A: tops up the pending burst with fresh mbufs (already holding the
 * frame), keeps what the ring refused for the next call. */
static inline void tx(struct gen *g, struct counts *c)
{
	unsigned int n = g->npending, i;
	uint16_t sent;

	if (n < BURST && rte_pktmbuf_alloc_bulk(g->tx_pool, g->pending + n, BURST - n) == 0) {
		for (i = n; i < BURST; i++) {
			g->pending[i]->data_len = g->len;
			g->pending[i]->pkt_len = g->len;
		}
		n = BURST;
	}
	if (n == 0)
		return;
	sent = rte_eth_tx_burst(g->port_a, 0, g->pending, n);
	c->tx_try += n;
	c->tx_ok += sent;
	if (sent < n)
		memmove(g->pending, g->pending + sent, (n - sent) * sizeof(g->pending[0]));
	g->npending = n - sent;
}

/* Sends and receives for secs seconds. */
static void run(struct gen *g, double secs, struct counts *c)
{
	uint64_t hz = rte_get_tsc_hz(), t0 = rte_rdtsc(), end = t0 + (uint64_t)(secs * hz), now;

	memset(c, 0, sizeof(*c));
	do {
		tx(g, c);
		drain(g, c);
		now = rte_rdtsc();
	} while (now < end && !stop);
	c->secs = (double)(now - t0) / hz;
}

/* Receives until every frame accepted in this run has come back, or nothing arrived for
 * 1 s (a frame was dropped). */
static void settle(struct gen *g, struct counts *c)
{
	uint64_t hz = rte_get_tsc_hz(), last = rte_rdtsc(), before;

	while (c->rx < c->tx_ok && !stop && rte_rdtsc() - last < hz) {
		before = c->rx;
		drain(g, c);
		if (c->rx != before)
			last = rte_rdtsc();
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: vu-gen [EAL args] -- --a PATH --b PATH [--server 0|1] [--in-order 0|1|default]\n"
			"       [--size BYTES] [--runs N] [--secs S] [--warm S] [--timeout S] [--sync]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"a", required_argument, NULL, 'a'},	   {"b", required_argument, NULL, 'b'},
		{"server", required_argument, NULL, 'S'},  {"in-order", required_argument, NULL, 'o'},
		{"size", required_argument, NULL, 's'},	   {"runs", required_argument, NULL, 'r'},
		{"secs", required_argument, NULL, 't'},	   {"warm", required_argument, NULL, 'w'},
		{"timeout", required_argument, NULL, 'T'}, {"sync", no_argument, NULL, 'y'},
		{NULL, 0, NULL, 0},
	};
	const char *path_a = NULL, *path_b = NULL, *in_order = "default";
	int server = 0, size = 64, runs = 5, sync_mode = 0, c, ret, r;
	double secs = 3.0, warm = 0.5, timeout = 30.0;
	struct gen *g;
	struct counts cnt;
	uint16_t port;
	pid_t parent;

	/* Do not outlive the benchmark driver (it may die without stopping us). */
	parent = getppid();
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		return 1;
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	signal(SIGALRM, on_alarm);
	signal(SIGUSR1, on_usr1);
	signal(SIGPIPE, SIG_IGN);

	ret = rte_eal_init(argc, argv);
	if (ret < 0)
		die("%s", "EAL init failed", rte_errno);
	argc -= ret;
	argv += ret;
	snprintf(rundir, sizeof(rundir), "%s", rte_eal_get_runtime_dir());
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'a': path_a = optarg; break;
		case 'b': path_b = optarg; break;
		case 'S': server = atoi(optarg); break;
		case 'o': in_order = optarg; break;
		case 's': size = atoi(optarg); break;
		case 'r': runs = atoi(optarg); break;
		case 't': secs = atof(optarg); break;
		case 'w': warm = atof(optarg); break;
		case 'T': timeout = atof(optarg); break;
		case 'y': sync_mode = 1; break;
		default: usage();
		}
	}
	if (!path_a || !path_b || size < 64 || size - 4 > MAX_FRAME || runs < 1 || secs <= 0 ||
	    (strcmp(in_order, "default") && strcmp(in_order, "0") && strcmp(in_order, "1")))
		usage();

	g = rte_zmalloc("vu-gen", sizeof(*g), 0);
	if (!g)
		die("%s", "out of memory", 0);
	g->len = size - 4;
	build_frame(g->frame, MAC_A, MAC_B, g->len);
	g->tx_pool = rte_pktmbuf_pool_create("vugen_tx", POOL_MBUFS, POOL_CACHE, 0,
					     RTE_PKTMBUF_HEADROOM + (g->len > 2048 ? g->len : 2048),
					     rte_socket_id());
	g->rx_pool = rte_pktmbuf_pool_create("vugen_rx", POOL_MBUFS, POOL_CACHE, 0,
					     RTE_PKTMBUF_HEADROOM + (g->len > 2048 ? g->len : 2048),
					     rte_socket_id());
	if (!g->tx_pool || !g->rx_pool)
		die("%s", "cannot create the mbuf pools (huge pages?)", rte_errno);
	rte_mempool_obj_iter(g->tx_pool, prefill, g);

	/* A server blocks in accept() until the backend connects: bound it. */
	alarm((unsigned int)timeout + 1);
	g->port_a = add_port(0, path_a, server, in_order, timeout);
	g->port_b = add_port(1, path_b, server, in_order, timeout);
	for (port = 0; port < 2; port++) {
		uint16_t p = port == 0 ? g->port_a : g->port_b;
		start_port(p, g->rx_pool);
		wait_link(p, timeout);
	}
	alarm(0);
	looping = 1;
	if (stop)
		goto out;
	/* Let the backend finish setting up its queues. */
	rte_delay_us_sleep(500 * 1000);
	learn(g);

	run(g, warm, &cnt);
	if (sync_mode)
		settle(g, &cnt);
	if (!sync_mode) {
		printf("{\"event\":\"start\",\"warm_rx\":%" PRIu64 "}\n", cnt.rx);
		fflush(stdout);
	}
	for (r = 0; r < runs && !stop; r++) {
		if (sync_mode) {
			struct counts idle;

			memset(&idle, 0, sizeof(idle));
			go = 0;
			printf("{\"event\":\"ready\",\"run\":%d}\n", r);
			fflush(stdout);
			while (!go && !stop) {
				drain(g, &idle);
				usleep(1000);
			}
		}
		run(g, secs, &cnt);
		if (sync_mode)
			settle(g, &cnt);
		printf("{\"run\":%d,\"secs\":%.6f,\"tx_try\":%" PRIu64 ",\"tx_ok\":%" PRIu64 ",\"tx_full\":%" PRIu64
		       ",\"rx\":%" PRIu64 ",\"rx_bytes\":%" PRIu64 "}\n",
		       r, cnt.secs, cnt.tx_try, cnt.tx_ok, cnt.tx_try - cnt.tx_ok, cnt.rx, cnt.rx_bytes);
		fflush(stdout);
	}
	if (sync_mode && !stop) {
		/* Tearing the ports down makes the backend work too: not before it is told. */
		struct counts idle;

		memset(&idle, 0, sizeof(idle));
		go = 0;
		printf("{\"event\":\"done\"}\n");
		fflush(stdout);
		while (!go && !stop) {
			drain(g, &idle);
			usleep(1000);
		}
	}
out:
	if (g->npending)
		rte_pktmbuf_free_bulk(g->pending, g->npending);
	for (port = 0; port < 2; port++) {
		uint16_t p = port == 0 ? g->port_a : g->port_b;
		rte_eth_dev_stop(p);
		rte_eth_dev_close(p);
	}
	rte_free(g);
	rte_eal_cleanup();
	/* DPDK leaves its (empty, with --in-memory --no-telemetry) runtime dir behind; a
	 * server's sockets are gone with the ports. */
	tidy();
	return stop ? 1 : 0;
}
