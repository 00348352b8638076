#ifndef SHEAF_CFUZZERDRIVER_H
#define SHEAF_CFUZZERDRIVER_H
#include <stddef.h>
#include <stdint.h>

/// Runs libFuzzer (its command line, corpus directories, -max_total_time, ...) over `test_one_input`.
/// SwiftPM points an executable's `main` at `<module>_main`, which each target defines to call this.
int sheaf_fuzz_main(int argc, char **argv, int (*test_one_input)(const uint8_t *data, size_t size));

#endif
