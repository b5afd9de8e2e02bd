/*
 * nullfs: the least a FUSE filesystem can do, for tests/bench/fs.sh's floor.
 *
 * A passthrough of a backing directory through libfuse's high-level API: every call goes to
 * the same call on the backing path, and nothing else happens (no hash, no journal, no
 * catalog, no import). `cp -r` into it costs what the kernel's round trips to a FUSE
 * filesystem cost on this machine, which is the most any FUSE filesystem can get.
 *
 *   cc -O2 -o nullfs nullfs.c $(pkg-config --cflags --libs fuse3)
 *   nullfs BACKING MOUNTPOINT [-f] [fuse options]
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

static int backing = -1;

/* The path under the backing directory, relative to it ("." for the root). */
static const char *rel(const char *path)
{
	while (*path == '/')
		path++;
	return *path ? path : ".";
}

static void *null_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	cfg->use_ino = 1;
	cfg->entry_timeout = 1.0;
	cfg->attr_timeout = 1.0;
	cfg->negative_timeout = 0.0;
	return NULL;
}

static int null_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	int r = fi ? fstat(fi->fh, st) : fstatat(backing, rel(path), st, AT_SYMLINK_NOFOLLOW);
	return r == -1 ? -errno : 0;
}

static int null_mkdir(const char *path, mode_t mode)
{
	return mkdirat(backing, rel(path), mode) == -1 ? -errno : 0;
}

static int null_unlink(const char *path)
{
	return unlinkat(backing, rel(path), 0) == -1 ? -errno : 0;
}

static int null_rmdir(const char *path)
{
	return unlinkat(backing, rel(path), AT_REMOVEDIR) == -1 ? -errno : 0;
}

static int null_rename(const char *from, const char *to, unsigned int flags)
{
	return renameat2(backing, rel(from), backing, rel(to), flags) == -1 ? -errno : 0;
}

static int null_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	int r = fi ? fchmod(fi->fh, mode) : fchmodat(backing, rel(path), mode, 0);
	return r == -1 ? -errno : 0;
}

static int null_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
	int r = fi ? fchown(fi->fh, uid, gid)
		   : fchownat(backing, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW);
	return r == -1 ? -errno : 0;
}

static int null_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	int r;
	if (fi) {
		r = ftruncate(fi->fh, size);
	} else {
		int fd = openat(backing, rel(path), O_WRONLY);
		if (fd == -1)
			return -errno;
		r = ftruncate(fd, size);
		close(fd);
	}
	return r == -1 ? -errno : 0;
}

static int null_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	int r = fi ? futimens(fi->fh, tv) : utimensat(backing, rel(path), tv, AT_SYMLINK_NOFOLLOW);
	return r == -1 ? -errno : 0;
}

static int null_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	int fd = openat(backing, rel(path), fi->flags, mode);
	if (fd == -1)
		return -errno;
	fi->fh = fd;
	return 0;
}

static int null_open(const char *path, struct fuse_file_info *fi)
{
	int fd = openat(backing, rel(path), fi->flags);
	if (fd == -1)
		return -errno;
	fi->fh = fd;
	return 0;
}

static int null_read(const char *path, char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	(void)path;
	ssize_t n = pread(fi->fh, buf, size, off);
	return n == -1 ? -errno : (int)n;
}

static int null_write(const char *path, const char *buf, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	(void)path;
	ssize_t n = pwrite(fi->fh, buf, size, off);
	return n == -1 ? -errno : (int)n;
}

static int null_flush(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	(void)fi;
	return 0;
}

static int null_release(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	close(fi->fh);
	return 0;
}

static int null_statfs(const char *path, struct statvfs *st)
{
	(void)path;
	return fstatvfs(backing, st) == -1 ? -errno : 0;
}

static int null_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
			struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	(void)off;
	(void)fi;
	(void)flags;
	int fd = openat(backing, rel(path), O_RDONLY | O_DIRECTORY);
	if (fd == -1)
		return -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		struct stat st = { .st_ino = e->d_ino, .st_mode = (mode_t)e->d_type << 12 };
		if (fill(buf, e->d_name, &st, 0, 0))
			break;
	}
	closedir(d);
	return 0;
}

static const struct fuse_operations ops = {
	.init = null_init,
	.getattr = null_getattr,
	.mkdir = null_mkdir,
	.unlink = null_unlink,
	.rmdir = null_rmdir,
	.rename = null_rename,
	.chmod = null_chmod,
	.chown = null_chown,
	.truncate = null_truncate,
	.utimens = null_utimens,
	.create = null_create,
	.open = null_open,
	.read = null_read,
	.write = null_write,
	.flush = null_flush,
	.release = null_release,
	.statfs = null_statfs,
	.readdir = null_readdir,
};

int main(int argc, char *argv[])
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s BACKING MOUNTPOINT [fuse options]\n", argv[0]);
		return 2;
	}
	backing = open(argv[1], O_RDONLY | O_DIRECTORY);
	if (backing == -1) {
		fprintf(stderr, "%s: cannot open %s: %s\n", argv[0], argv[1], strerror(errno));
		return 1;
	}
	/* fuse_main sees MOUNTPOINT and the options, not BACKING. */
	argv[1] = argv[0];
	umask(0);
	return fuse_main(argc - 1, argv + 1, &ops, NULL);
}
