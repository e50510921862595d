// SPDX-License-Identifier: Apache-2.0
/*
 * bulk: loopback TCP bulk throughput. A receiver thread accepts on
 * 127.0.0.1 and reads until EOF; the main thread connects and writes
 * WRITE_KIB KiB at a time for the given number of seconds, opening a new
 * connection every CONN_SECS seconds, so that most of the time is spent on
 * established connections (where callscope's cgroup_skb programs run on
 * every packet) and a few connects still happen. Prints
 * "bytes N seconds S rate R connections C cpu U": N bytes the receiver read,
 * S seconds from the first connect to the last EOF, R = N/S bytes per
 * second, C connect(2) calls made (the last one, which sends nothing,
 * included), U the CPU seconds both threads used (user and system, which
 * includes the softirq work done in their context: on loopback, the whole
 * TCP path). N/U is immune to time other processes take from the CPU.
 *
 *   cc -O2 -pthread -o bulk bulk.c && taskset -c 0 ./bulk 5
 *   ./bulk SECS [WRITE_KIB] [CONN_SECS]   (defaults: 5, 128, 1)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static int ln;
static size_t bufsize;
static long received; /* written by the receiver, read after it is joined */

static void *receiver(void *arg)
{
	(void)arg;
	char *buf = malloc(bufsize);
	if (!buf) {
		perror("malloc");
		exit(1);
	}
	for (;;) {
		int s = accept(ln, NULL, NULL);
		if (s < 0) {
			perror("accept");
			exit(1);
		}
		ssize_t n;
		long got = 0;
		while ((n = read(s, buf, bufsize)) > 0)
			got += n;
		if (n < 0) {
			perror("read");
			exit(1);
		}
		close(s);
		/* A zero-byte connection is the sender's signal that it is done. */
		if (got == 0)
			break;
		received += got;
	}
	free(buf);
	return NULL;
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 5;
	bufsize = (size_t)(argc > 2 ? atol(argv[2]) : 128) << 10;
	double conn_secs = argc > 3 ? atof(argv[3]) : 1;
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(addr);
	int one = 1;

	if (secs <= 0 || bufsize == 0 || conn_secs <= 0) {
		fprintf(stderr, "usage: bulk SECS [WRITE_KIB] [CONN_SECS]\n");
		return 2;
	}
	char *buf = malloc(bufsize);
	if (!buf) {
		perror("malloc");
		return 1;
	}
	memset(buf, 'x', bufsize);

	ln = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(ln, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ln < 0 || bind(ln, (struct sockaddr *)&addr, sizeof(addr)) || listen(ln, 16) ||
	    getsockname(ln, (struct sockaddr *)&addr, &len)) {
		perror("listen");
		return 1;
	}
	pthread_t rt;
	if (pthread_create(&rt, NULL, receiver, NULL)) {
		perror("pthread_create");
		return 1;
	}

	long conns = 0;
	double cpu0 = cpu_seconds();
	double start = now(), end = start + secs;
	for (double t = start; t < end; conns++) {
		int c = socket(AF_INET, SOCK_STREAM, 0);
		if (c < 0 || connect(c, (struct sockaddr *)&addr, sizeof(addr))) {
			perror("connect");
			return 1;
		}
		double until = t + conn_secs < end ? t + conn_secs : end;
		while ((t = now()) < until) {
			size_t off = 0;
			while (off < bufsize) {
				ssize_t n = write(c, buf + off, bufsize - off);
				if (n < 0) {
					perror("write");
					return 1;
				}
				off += (size_t)n;
			}
		}
		close(c); /* the receiver reads to EOF: every byte written is counted */
	}
	/* Tell the receiver to stop: a connection that sends nothing. */
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&addr, sizeof(addr))) {
		perror("connect");
		return 1;
	}
	close(c);
	conns++;
	pthread_join(rt, NULL);
	double took = now() - start;
	printf("bytes %ld seconds %.3f rate %.0f connections %ld cpu %.3f\n", received, took, received / took, conns,
	       cpu_seconds() - cpu0);
	free(buf);
	return 0;
}
