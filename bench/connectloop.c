// SPDX-License-Identifier: Apache-2.0
/*
 * connectloop: connect to a listener in the same process and close with RST
 * (SO_LINGER 0, so no TIME_WAIT and ports never run out), as fast as it can,
 * for the given number of seconds. Prints "connects N seconds S rate R".
 *
 *   cc -O2 -o connectloop connectloop.c && ./connectloop 5
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 5;
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(addr);
	int one = 1;
	struct linger lin = {.l_onoff = 1, .l_linger = 0};

	int ln = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(ln, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ln < 0 || bind(ln, (struct sockaddr *)&addr, sizeof(addr)) || listen(ln, 4096) ||
	    getsockname(ln, (struct sockaddr *)&addr, &len)) {
		perror("listen");
		return 1;
	}

	long n = 0;
	double start = now(), end = start + secs;
	while ((n & 255) || now() < end) {
		int c = socket(AF_INET, SOCK_STREAM, 0);
		if (c < 0 || connect(c, (struct sockaddr *)&addr, sizeof(addr))) {
			perror("connect");
			return 1;
		}
		int s = accept(ln, NULL, NULL);
		if (s < 0) {
			perror("accept");
			return 1;
		}
		setsockopt(c, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin));
		close(c);
		close(s);
		n++;
	}
	double took = now() - start;
	printf("connects %ld seconds %.3f rate %.0f\n", n, took, n / took);
	return 0;
}
