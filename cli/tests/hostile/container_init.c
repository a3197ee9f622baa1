/* A minimal container: run inside `unshare -m --propagation private`. Makes ROOT the root
 * of this mount namespace (pivot_root, old root detached, so /proc/PID/maps shows paths as
 * the container sees them), starts /bin/prog, then mounts SOURCE over TARGET (paths inside
 * the container) once the program has mapped its binary, and prints "pid=PID".
 * usage: container_init ROOT SOURCE TARGET */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    if (mount(argv[1], argv[1], NULL, MS_BIND | MS_REC, NULL) != 0 || chdir(argv[1]) != 0) {
        perror("bind root");
        return 1;
    }
    mkdir(".old", 0700);
    if (syscall(SYS_pivot_root, ".", ".old") != 0 || chdir("/") != 0) {
        perror("pivot_root");
        return 1;
    }
    if (umount2("/.old", MNT_DETACH) != 0) {
        perror("umount old root");
        return 1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/prog", "prog", (char *)NULL);
        _exit(127);
    }
    usleep(300 * 1000);
    if (mount(argv[2], argv[3], NULL, MS_BIND, NULL) != 0) {
        perror("bind over the mapped path");
        return 1;
    }
    printf("pid=%d\n", pid);
    fflush(stdout);
    int status;
    waitpid(pid, &status, 0);
    return 0;
}
