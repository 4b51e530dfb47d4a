/* The lab's pod sandbox process (image registry.k8s.io/pause): holds the pod's namespaces open.
 * Sleeps in pause(); as PID 1 of a pod sharing its PID namespace it reaps orphaned children;
 * SIGINT or SIGTERM end it with status 0. Built with `gcc -static -Os -s` (lab/images.py). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int signo)
{
	fprintf(stderr, "pause: shutting down, got signal %d\n", signo);
	exit(0);
}

static void on_child(int signo)
{
	(void)signo;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(int argc, char **argv)
{
	struct sigaction stop = {.sa_handler = on_stop};
	struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};

	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("pause 3.10.1 (apiary lab)");
		return 0;
	}
	if (getpid() != 1)
		fprintf(stderr, "pause: warning: not PID 1, orphans are not reaped here\n");
	if (sigaction(SIGINT, &stop, NULL) || sigaction(SIGTERM, &stop, NULL) ||
	    sigaction(SIGCHLD, &child, NULL)) {
		perror("pause: sigaction");
		return 1;
	}
	for (;;)
		pause();
}
