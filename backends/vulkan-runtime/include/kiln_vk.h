/*
 * kiln_vk.h - C API of kiln's Vulkan runtime (libkiln_vk).
 *
 * Loads a kiln Vulkan bundle (.kvk) written by kiln's `vulkan` backend, creates its compute pipelines
 * once, and runs it many times on the first suitable Vulkan device (KILN_VK_DEVICE=<index> picks one;
 * otherwise discrete GPU > integrated > virtual > CPU). KILN_VK_VALIDATION=1 enables the Khronos
 * validation layer.
 *
 * Typical use:
 *
 *     kiln_vk_session* s = kiln_vk_create("model.kvk", "model.pipecache");
 *     if (!s) { fprintf(stderr, "%s\n", kiln_vk_last_error()); return 1; }
 *     kiln_vk_set_input(s, 0, pixels, n_pixels);
 *     kiln_vk_run(s);
 *     kiln_vk_get_output(s, 0, scores, n_scores);
 *     kiln_vk_destroy(s);
 *
 * Every tensor is exchanged as f32 values, row-major in the model's shape (integer tensors too: exact
 * below 2^24). A session may be used from any thread, but not from two threads at once. Functions that
 * fail return NULL, -1 (or 0 / -1.0 where noted) and leave a message for kiln_vk_last_error().
 */
#ifndef KILN_VK_H
#define KILN_VK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A loaded bundle on one Vulkan device (opaque). */
typedef struct kiln_vk_session kiln_vk_session;

/** Description of a model input or output. The pointers live as long as the session. */
typedef struct {
    /** The tensor's name in the model, NUL-terminated. */
    const char* name;
    /** The model's element type ("float32", "int64", ...), NUL-terminated; values are passed as f32. */
    const char* dtype;
    /** Number of dimensions. */
    size_t rank;
    /** `rank` dimensions. */
    const uint64_t* shape;
    /** Product of the dimensions: the `count` that kiln_vk_set_input / kiln_vk_get_output expect. */
    size_t elements;
} kiln_vk_tensor_info;

/**
 * Load the bundle file at `bundle_path`. `pipeline_cache_path` (NULL: none) names a pipeline cache file,
 * read if it exists and written back after the pipelines are created (a failure to write it is an error).
 * Returns NULL on error.
 */
kiln_vk_session* kiln_vk_create(const char* bundle_path, const char* pipeline_cache_path);

/** Like kiln_vk_create, from `len` bytes in memory (which may be freed after the call). NULL on error. */
kiln_vk_session* kiln_vk_create_from_memory(const void* bytes, size_t len, const char* pipeline_cache_path);

/** Wait for the device and free the session. NULL is a no-op. */
void kiln_vk_destroy(kiln_vk_session* session);

/** Number of model inputs (0 for NULL). */
size_t kiln_vk_input_count(const kiln_vk_session* session);

/** Number of model outputs (0 for NULL). */
size_t kiln_vk_output_count(const kiln_vk_session* session);

/** Describe input `index` into `*out`. 0 ok, -1 error. */
int kiln_vk_input_info(const kiln_vk_session* session, size_t index, kiln_vk_tensor_info* out);

/** Describe output `index` into `*out`. 0 ok, -1 error. */
int kiln_vk_output_info(const kiln_vk_session* session, size_t index, kiln_vk_tensor_info* out);

/** Copy `count` floats (exactly the input's `elements`) into input `index`. 0 ok, -1 error. */
int kiln_vk_set_input(kiln_vk_session* session, size_t index, const float* data, size_t count);

/** Run the model on the current inputs and wait for it. Does not allocate memory. 0 ok, -1 error. */
int kiln_vk_run(kiln_vk_session* session);

/** Copy output `index` (`count` = its `elements`) into `out`, after kiln_vk_run. 0 ok, -1 error. */
int kiln_vk_get_output(const kiln_vk_session* session, size_t index, float* out, size_t count);

/** Milliseconds the first kiln_vk_run took; -1.0 before the first run or for NULL. */
double kiln_vk_first_run_ms(const kiln_vk_session* session);

/** Milliseconds kiln_vk_create took; -1.0 for NULL. */
double kiln_vk_load_ms(const kiln_vk_session* session);

/**
 * The message of the last failed call on this thread, "" if none. Owned by the library; valid until the
 * next failing call on this thread.
 */
const char* kiln_vk_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* KILN_VK_H */
