// forkconnect forks N children that each connect to 127.0.0.1:PORT and stay
// alive 3 s, so that the agent caches N distinct processes: the memory
// figure of docs/benchmarks.md.
//
//   cc -O2 -o forkconnect bench/forkconnect.c && ./forkconnect 10000 PORT
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
	int n = atoi(argv[1]), port = atoi(argv[2]);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	for (int i = 0; i < n; i++) {
		pid_t p = fork();
		if (p == 0) {
			int fd = socket(AF_INET, SOCK_STREAM, 0);
			connect(fd, (struct sockaddr *)&a, sizeof a);
			sleep(3); /* alive while the agent reads /proc */
			_exit(0);
		}
		if (i % 500 == 499) while (waitpid(-1, NULL, WNOHANG) > 0) ;
	}
	while (wait(NULL) > 0) ;
	return 0;
}
