/*
 * demo: a pretend request handler with several nested call paths of different weights, so a
 * flame graph of it has some shape to look at (used by the README demo).
 *
 *   main -> serve -> handle_request -> parse_request -> tokenize
 *                                   -> route -> render_page -> render_table -> format_cell
 *                                            -> compute_report -> sort_records
 *                                                              -> aggregate -> hash_mix
 *                                   -> compress_response -> lz_match
 *                                                        -> crc_update
 * Plus a worker thread running background_flush -> crc_update, so the same leaf appears
 * under two parents.
 *
 * usage: demo [-s SECONDS (10)]
 */
#include "common.h"

#include <pthread.h>

#define NOINL __attribute__((noinline, noclone))

static atomic_uint_fast64_t requests;
static double seconds = 10;
static volatile uint64_t sink;

static uint64_t wl_total_ops(void)
{
    return atomic_load(&requests);
}

/* Every leaf burns `n` rounds of the same mixing loop; the weights live in the callers. */
static inline uint64_t burn(uint64_t x, long n, uint64_t k)
{
    wl_keep_frame();
    for (long i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x += k;
    }
    return x;
}

NOINL uint64_t tokenize(uint64_t x) { return burn(x, 1500, 1); }
NOINL uint64_t parse_request(uint64_t x) { return tokenize(burn(x, 300, 2)) + 1; }
NOINL uint64_t format_cell(uint64_t x) { return burn(x, 250, 3); }

NOINL uint64_t render_table(uint64_t x)
{
    for (int i = 0; i < 8; i++)
        x = format_cell(x);
    return x + 1;
}

NOINL uint64_t render_page(uint64_t x) { return render_table(burn(x, 400, 4)) + 1; }
NOINL uint64_t sort_records(uint64_t x) { return burn(x, 2500, 5); }
NOINL uint64_t hash_mix(uint64_t x) { return burn(x, 1200, 6); }
NOINL uint64_t aggregate(uint64_t x) { return hash_mix(hash_mix(x)) + 1; }
NOINL uint64_t compute_report(uint64_t x) { return aggregate(sort_records(x)) + 1; }

NOINL uint64_t route(uint64_t x)
{
    /* Every third request is a report: uneven, but deterministic. */
    return (atomic_load_explicit(&requests, memory_order_relaxed) % 3 == 0)
               ? compute_report(x) + 1
               : render_page(x) + 1;
}

NOINL uint64_t lz_match(uint64_t x) { return burn(x, 1800, 7); }
NOINL uint64_t crc_update(uint64_t x) { return burn(x, 700, 8); }
NOINL uint64_t compress_response(uint64_t x) { return crc_update(lz_match(x)) + 1; }

NOINL uint64_t handle_request(uint64_t x)
{
    x = parse_request(x);
    x = route(x);
    return compress_response(x) + 1;
}

NOINL uint64_t serve(uint64_t x)
{
    while (!wl_stopped()) {
        x = handle_request(x);
        atomic_fetch_add_explicit(&requests, 1, memory_order_relaxed);
    }
    return x;
}

NOINL uint64_t background_flush(uint64_t x)
{
    for (int i = 0; i < 4; i++)
        x = crc_update(x);
    return x + 1;
}

NOINL void *background(void *arg)
{
    (void)arg;
    uint64_t x = 3;
    /* Mostly asleep: a thin second tower next to the request handler. */
    while (!wl_stopped()) {
        x = background_flush(x);
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    sink = x;
    return NULL;
}

static void set_opt(char o, const char *v)
{
    if (o == 's')
        seconds = wl_parse_seconds(v);
}

int main(int argc, char **argv)
{
    wl_getopt(argc, argv, "s", "[-s SECONDS (0 = until SIGINT)]", set_opt);
    wl_start(seconds);
    pthread_t bg;
    if ((errno = pthread_create(&bg, NULL, background, NULL)))
        wl_die("pthread_create");
    printf("pid=%d name=demo\n", (int)getpid());
    sink = serve(1);
    pthread_join(bg, NULL);
    wl_report("demo");
    return 0;
}
