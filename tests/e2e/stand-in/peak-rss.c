/*
 * peak-rss OUT COMMAND [ARG...]: runs COMMAND and writes into OUT the peak
 * resident memory, in KB, of the largest process of its tree: COMMAND and
 * every process it starts, those it leaves behind included.
 *
 * GNU time's %M sees only the processes that were waited for; the hook
 * leaves its last forked reader to end on its own. As a child subreaper,
 * this program gets every such process back, reaps it and takes its peak.
 * What still runs 10 s after COMMAND ended is not waited for (said on
 * stderr). A small C program: a process keeps the peak of the program it
 * was before its exec, so the starter's own size must not count.
 *
 * COMMAND's output passes through; the exit status is COMMAND's.
 */
#include <errno.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: peak-rss OUT COMMAND [ARG...]\n");
		return 2;
	}
	if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
		perror("peak-rss: prctl");
		return 2;
	}
	pid_t child = fork();
	if (child < 0) {
		perror("peak-rss: fork");
		return 2;
	}
	if (child == 0) {
		execvp(argv[2], argv + 2);
		perror("peak-rss: exec");
		_exit(127);
	}
	long peak = 0;
	int status = 0, ended = 0;
	double ended_at = 0;
	for (;;) {
		int st;
		struct rusage ru;
		pid_t pid = wait4(-1, &st, ended ? WNOHANG : 0, &ru);
		if (pid < 0 && errno == EINTR)
			continue;
		if (pid < 0)
			break;
		if (pid == 0) {
			if (now() - ended_at > 10) {
				fprintf(stderr, "peak-rss: processes still running were not waited for\n");
				break;
			}
			usleep(10000);
			continue;
		}
		if (ru.ru_maxrss > peak)
			peak = ru.ru_maxrss;
		if (pid == child) {
			status = st;
			ended = 1;
			ended_at = now();
		}
	}
	FILE *out = fopen(argv[1], "w");
	if (!out || fprintf(out, "%ld\n", peak) < 0 || fclose(out) != 0) {
		perror("peak-rss: writing the result");
		return 2;
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
