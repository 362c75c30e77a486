/* treesum: checksums and word frequencies of files and folder trees.
 *
 * An ordinary command-line tool, written with no knowledge of p2pnode, used to show that such a
 * program runs unmodified as a command job. For every file (folders are walked recursively, in
 * name order) it prints the CRC-32 (zlib's), the size and the word count; "-" reads stdin. With
 * -o it writes the N most frequent words (-n, default 10) to a file, through a temporary file in
 * $TMPDIR (default /tmp) so a partial report is never left behind. $TREESUM_LABEL, if set, heads
 * the listing. A bad flag prints the usage on stderr and exits with status 2; an unreadable path
 * is reported on stderr and the exit status is 1.
 *
 * Build (Debian: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32):
 *   clang --target=wasm32-wasi --sysroot=/usr -O2 -s -o treesum.wasm treesum.c
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_WORD 64

struct word {
    char *text;
    unsigned long count;
    struct word *next;
};

static struct word *table[4096];
static size_t distinct;
static unsigned long total_files, total_bytes, total_words;
static int status;

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

static void count_word(const char *text) {
    uint32_t h = 2166136261u;
    for (const char *p = text; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    struct word **slot = &table[h % 4096];
    for (struct word *w = *slot; w; w = w->next)
        if (strcmp(w->text, text) == 0) {
            w->count++;
            return;
        }
    struct word *w = malloc(sizeof *w);
    if (!w || !(w->text = strdup(text))) {
        fprintf(stderr, "treesum: out of memory\n");
        exit(1);
    }
    w->count = 1;
    w->next = *slot;
    *slot = w;
    distinct++;
}

/* Checksums, sizes and counts one stream; words are runs of letters and digits, lowercased. */
static void sum_stream(FILE *f, const char *name) {
    static unsigned char buf[65536]; /* not on the stack: WASI's default stack is 64 KiB */
    char word[MAX_WORD + 1];
    size_t len = 0, got;
    uint32_t crc = 0xffffffffu;
    unsigned long bytes = 0, words = 0;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
        for (size_t i = 0; i < got; i++) {
            crc = crc_table[(crc ^ buf[i]) & 0xff] ^ (crc >> 8);
            if (isalnum(buf[i])) {
                if (len < MAX_WORD)
                    word[len++] = (char)tolower(buf[i]);
            } else if (len) {
                word[len] = 0;
                count_word(word);
                words++;
                len = 0;
            }
        }
        bytes += got;
    }
    if (len) {
        word[len] = 0;
        count_word(word);
        words++;
    }
    if (ferror(f)) {
        fprintf(stderr, "treesum: %s: read error\n", name);
        status = 1;
        return;
    }
    printf("%08x %10lu %8lu  %s\n", crc ^ 0xffffffffu, bytes, words, name);
    total_files++;
    total_bytes += bytes;
    total_words += words;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void sum_path(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "treesum: %s: %s\n", path, strerror(errno));
        status = 1;
        return;
    }
    if (!S_ISDIR(st.st_mode)) {
        FILE *f = fopen(path, "rb");
        if (!f) {
            fprintf(stderr, "treesum: %s: %s\n", path, strerror(errno));
            status = 1;
            return;
        }
        sum_stream(f, path);
        fclose(f);
        return;
    }
    DIR *dir = opendir(path);
    if (!dir) {
        fprintf(stderr, "treesum: %s: %s\n", path, strerror(errno));
        status = 1;
        return;
    }
    char **names = NULL;
    size_t count = 0, room = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
            continue;
        if (count == room) {
            room = room ? 2 * room : 64;
            names = realloc(names, room * sizeof *names);
        }
        size_t size = strlen(path) + strlen(entry->d_name) + 2;
        names[count] = malloc(size);
        snprintf(names[count++], size, "%s/%s", path, entry->d_name);
    }
    closedir(dir);
    qsort(names, count, sizeof *names, by_name);
    for (size_t i = 0; i < count; i++) {
        sum_path(names[i]);
        free(names[i]);
    }
    free(names);
}

static int by_count(const void *a, const void *b) {
    const struct word *x = *(struct word *const *)a, *y = *(struct word *const *)b;
    if (x->count != y->count)
        return x->count < y->count ? 1 : -1;
    return strcmp(x->text, y->text);
}

/* Creates the folders leading to path (like mkdir -p on its dirname). */
static void make_parents(const char *path) {
    char *copy = strdup(path);
    for (char *p = copy + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            mkdir(copy, 0777);
            *p = '/';
        }
    free(copy);
}

static int write_report(const char *out, unsigned long top) {
    struct word **all = malloc((distinct ? distinct : 1) * sizeof *all);
    size_t n = 0;
    for (size_t i = 0; i < 4096; i++)
        for (struct word *w = table[i]; w; w = w->next)
            all[n++] = w;
    qsort(all, n, sizeof *all, by_count);

    const char *tmpdir = getenv("TMPDIR");
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s/treesum-report.part", tmpdir && *tmpdir ? tmpdir : "/tmp");
    FILE *f = fopen(tmp, "w+");
    if (!f) {
        fprintf(stderr, "treesum: %s: %s\n", tmp, strerror(errno));
        return 1;
    }
    for (size_t i = 0; i < n && i < top; i++)
        fprintf(f, "%lu %s\n", all[i]->count, all[i]->text);
    free(all);

    make_parents(out);
    FILE *dest = fopen(out, "w");
    if (!dest) {
        fprintf(stderr, "treesum: %s: %s\n", out, strerror(errno));
        fclose(f);
        return 1;
    }
    rewind(f);
    static char buf[65536];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, got, dest);
    fclose(f);
    remove(tmp);
    return fclose(dest) == 0 ? 0 : 1;
}

static int usage(void) {
    fprintf(stderr, "usage: treesum [-n TOP] [-o REPORT] PATH...   (PATH - is stdin)\n");
    return 2;
}

int main(int argc, char **argv) {
    const char *out = NULL;
    unsigned long top = 10;
    int opt;
    while ((opt = getopt(argc, argv, "n:o:")) != -1) {
        switch (opt) {
        case 'n': {
            char *end;
            top = strtoul(optarg, &end, 10);
            if (*end || !*optarg) {
                fprintf(stderr, "treesum: -n wants a number, not %s\n", optarg);
                return usage();
            }
            break;
        }
        case 'o':
            out = optarg;
            break;
        default:
            return usage();
        }
    }
    if (optind == argc)
        return usage();
    crc_init();
    const char *label = getenv("TREESUM_LABEL");
    if (label)
        printf("# %s\n", label);
    for (int i = optind; i < argc; i++) {
        if (strcmp(argv[i], "-") == 0)
            sum_stream(stdin, "-");
        else
            sum_path(argv[i]);
    }
    printf("%lu files, %lu bytes, %lu words (%zu distinct)\n", total_files, total_bytes,
           total_words, distinct);
    if (out && write_report(out, top) != 0)
        status = 1;
    return status;
}
