/* The pod sandbox process ("pause") of the test node's sandbox image: PID 1 of every pod, it holds
 * the pod's namespaces, reaps orphans that containers sharing its PID namespace leave, and exits 0
 * on SIGINT/SIGTERM. Built static by tests/env/prepare.sh (gcc -static), so the image is this one
 * file. */
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    if (getpid() != 1) {
        fputs("pause: not PID 1; orphans of the pod will not be reaped here\n", stderr);
    }
    for (;;) {
        pause();
    }
}
