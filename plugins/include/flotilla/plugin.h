/*
 * Flotilla plugin ABI, major version 1.
 *
 * A plugin is a shared library that exports one C function, flotilla_plugin_v1 (one entry
 * point per ABI major version). The host calls it with a flotilla_host (logging, error
 * reporting, output allocation) and receives a flotilla_plugin describing the plugin: its kind,
 * name, version, the options it takes, and the kind's function table.
 *
 * Rules that keep old plugins loading in new hosts and new plugins in old hosts:
 *  - Structs only grow by appending fields; each starts with its struct_size. A reader checks
 *    the size before reading a field past the version-1.0 layout.
 *  - The host checks abi_major and struct sizes before calling anything.
 *  - Tensors cross as DLPack DLTensor descriptors (borrowed for the duration of a call).
 *    Tensors a plugin hands back are written into memory the host allocated
 *    (flotilla_host.output_tensor), so no plugin memory outlives a call and unloading is safe.
 *  - Errors cross as a flotilla_status plus a message (flotilla_host.set_error before
 *    returning). No C++ type, exception or allocation crosses the boundary.
 *
 * See docs/plugins.md and examples/plugins/ for a complete plugin.
 */
#ifndef FLOTILLA_PLUGIN_H
#define FLOTILLA_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#if defined(__has_include)
#if __has_include(<dlpack/dlpack.h>)
#include <dlpack/dlpack.h>
#elif __has_include(<ATen/dlpack.h>)
/* A LibTorch without Debian's libdlpack-dev (e.g. inside a pip-installed PyTorch) ships it. */
#include <ATen/dlpack.h>
#else
#error "flotilla/plugin.h needs dlpack/dlpack.h (Debian: libdlpack-dev) or LibTorch's ATen/dlpack.h"
#endif
#else
#include <dlpack/dlpack.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define FLOTILLA_PLUGIN_ABI_MAJOR 1
#define FLOTILLA_PLUGIN_ABI_MINOR 2
/* 1.1: aggregator_flags; host lend_tensor/emit_lent.
 * 1.2: the LoRA flags (FLOTILLA_AGG_LORA_*, FLOTILLA_AGG_WRITES_BASE); host lora_alpha. */
/* The entry point's name for this ABI major. */
#define FLOTILLA_PLUGIN_ENTRY_NAME "flotilla_plugin_v1"

#if defined(_WIN32)
#define FLOTILLA_PLUGIN_EXPORT __declspec(dllexport)
#else
#define FLOTILLA_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

typedef enum flotilla_status {
  FLOTILLA_OK = 0,
  FLOTILLA_E_INVALID = 1,     /* a bad option or argument (e.g. an option out of range) */
  FLOTILLA_E_REJECTED = 2,    /* an update the method does not take (names, shapes) */
  FLOTILLA_E_UNSUPPORTED = 3, /* the call is not supported by this plugin */
  FLOTILLA_E_NO_MEMORY = 4,
  FLOTILLA_E_INTERNAL = 5
} flotilla_status;

typedef enum flotilla_plugin_kind {
  FLOTILLA_KIND_AGGREGATOR = 1, /* server side: folds client updates into a new model */
  FLOTILLA_KIND_OPTIMIZER = 2   /* client side: steps parameters with their gradients */
} flotilla_plugin_kind;

typedef enum flotilla_log_level {
  FLOTILLA_LOG_DEBUG = 0,
  FLOTILLA_LOG_INFO = 1,
  FLOTILLA_LOG_WARN = 2,
  FLOTILLA_LOG_ERROR = 3
} flotilla_log_level;

/* A borrowed, named tensor. `tensor` may live on the CPU or on the configured device; data is
 * valid only during the call that passes it. */
typedef struct flotilla_tensor {
  const char* name; /* e.g. "fc1.weight", "fc1.lora_A.weight" */
  DLTensor tensor;
} flotilla_tensor;

typedef struct flotilla_tensors {
  const flotilla_tensor* items;
  size_t count;
} flotilla_tensors;

/* One option from the run config, as text ("0.9", "16", "true", "median"). The host has
 * already checked the key against the plugin's option specs and the value against its type. */
typedef struct flotilla_option {
  const char* key;
  const char* value;
} flotilla_option;

typedef struct flotilla_options {
  const flotilla_option* items;
  size_t count;
} flotilla_options;

/* An option a plugin takes: the host rejects unknown keys and values of the wrong type. */
typedef struct flotilla_option_spec {
  const char* key;           /* kebab-case, e.g. "server-learning-rate" */
  const char* type;          /* "float", "int", "bool" or "string" */
  const char* default_value; /* as text */
  const char* help;
} flotilla_option_spec;

/* Where a call's output tensors go; opaque, owned by the host. */
typedef struct flotilla_output flotilla_output;

typedef struct flotilla_host {
  size_t struct_size; /* sizeof(flotilla_host) of the host's header */
  uint32_t abi_major;
  uint32_t abi_minor;
  void* context;      /* pass back to the functions below */
  /* The device plugins compute on (the run's configured device). */
  DLDevice device;
  /* Writes one line to the run's log, attributed to the plugin. */
  void (*log)(void* context, flotilla_log_level level, const char* message);
  /* Records why the call in progress fails; call it before returning a status != FLOTILLA_OK.
   * The message is copied. */
  void (*set_error)(void* context, const char* message);
  /* Allocates an output tensor, owned by the host, on `device` (host->device or kDLCPU), and
   * describes it in *result for the plugin to fill before the call returns. Order of calls is
   * the order of the output. FLOTILLA_E_INVALID for a name used twice or a bad dtype/shape. */
  int (*output_tensor)(void* context, flotilla_output* out, const char* name, DLDataType dtype,
                       int32_t ndim, const int64_t* shape, DLDevice device, DLTensor* result);
  /* Since ABI 1.1 (present when struct_size covers them): memory the host lends a plugin to
   * keep across calls (e.g. its running sum), described in *result and identified by *handle,
   * so that a result can be handed over without a copy: emit_lent makes the lent tensor output
   * `name` of `out` (the handle is spent, even when it fails), release_lent gives it back
   * unused. Every handle must
   * be emitted or released before the state is destroyed. */
  int (*lend_tensor)(void* context, DLDataType dtype, int32_t ndim, const int64_t* shape,
                     DLDevice device, DLTensor* result, void** handle);
  int (*emit_lent)(void* context, flotilla_output* out, const char* name, void* handle);
  void (*release_lent)(void* context, void* handle);
  /* Since ABI 1.2 (present when struct_size covers it): the run's LoRA alpha (adapters scale
   * their output by lora_alpha / rank), 0 when the run's model has no adapters. */
  double lora_alpha;
} flotilla_host;

/* What the host knows about one update. */
typedef struct flotilla_update_info {
  size_t struct_size;
  double weight;      /* e.g. the client's number of training examples; > 0 */
  uint64_t staleness; /* model versions between the update's base and the current model */
  uint32_t client_id;
} flotilla_update_info;

/* What an aggregation method declares about itself (flotilla_plugin.aggregator_flags, ABI 1.1),
 * so that the host refuses a combination with a schedule that makes no sense, by what the
 * plugin says rather than by its name. */
typedef enum flotilla_aggregator_flag {
  /* finalize needs many updates at once to mean anything, or costs a decomposition per version
   * (robust rules, an SVD): refused where every update is a version (the async schedule). */
  FLOTILLA_AGG_NEEDS_COHORT = 1u << 0,
  /* It keeps the global model between versions and steps it itself (server optimizers):
   * refused where the schedule moves the model on its own (async mixing, buffered with a
   * server learning rate other than 1). */
  FLOTILLA_AGG_TRACKS_GLOBAL = 1u << 1,
  /* Since ABI 1.2: what a LoRA method needs, so that the host configures clients for it and
   * refuses a run that cannot work, whatever the method's name.
   * It aggregates LoRA adapters ("<layer>.lora_A.weight", "<layer>.lora_B.weight"): the run's
   * model must have them (lora.rank > 0); clients send adapters, not base weights. */
  FLOTILLA_AGG_LORA_ADAPTERS = 1u << 2,
  /* A stays at its initialisation, drawn from a seed every client shares; clients train and
   * send only B (the host requires lora.freeze-a = true). */
  FLOTILLA_AGG_LORA_FROZEN_A = 1u << 3,
  /* B is each client's own: clients keep their B from task to task and send only A; tasks
   * carry no B (FedSA-LoRA). */
  FLOTILLA_AGG_LORA_LOCAL_B = 1u << 4,
  /* finalize may emit tensors clients do not train (e.g. frozen base weights a method folds
   * a residual or merged adapters into); tasks then carry them. Without this flag such an
   * output fails the version. */
  FLOTILLA_AGG_WRITES_BASE = 1u << 5,
  /* It needs A and B of every adapted layer from every client (it multiplies B·A): clients
   * must train A too (the host refuses lora.freeze-a = true). */
  FLOTILLA_AGG_LORA_TRAINS_A = 1u << 6
} flotilla_aggregator_flag;

/* Kind FLOTILLA_KIND_AGGREGATOR. The host calls one state from one thread at a time. */
typedef struct flotilla_aggregator_api {
  size_t struct_size;
  /* Creates a state for a run whose global model is `global` (every tensor clients load:
   * frozen base weights, adapters, buffers). */
  int (*create)(const flotilla_host* host, const flotilla_options* options,
                const flotilla_tensors* global, void** state);
  /* Whether `accept` would take this update (names, shapes, dtypes: what the method trains).
   * Metadata only: tensor data may not be read. FLOTILLA_E_REJECTED with a message if not. */
  int (*check)(void* state, const flotilla_tensors* update, const flotilla_update_info* info);
  /* Folds one update in. A rejected update must leave the state unchanged. */
  int (*accept)(void* state, const flotilla_tensors* update, const flotilla_update_info* info);
  /* Produces the next global model from the updates accepted since the last finalize, and
   * resets for the next version. It emits (output_tensor) the tensors that change; tensors it
   * does not emit keep their value. The host calls it only when at least one update was
   * accepted. */
  int (*finalize)(void* state, flotilla_output* global_out);
  /* Optional (NULL: every client receives the global model). The tensors client `client_id`
   * should load, shaped like `client_template` (the client's own trainable tensors, e.g. at
   * its own LoRA rank); called after finalize, once per client sent a task. */
  int (*client_model)(void* state, uint32_t client_id, const flotilla_tensors* client_template,
                      flotilla_output* out);
  /* Drops the updates accepted since the last finalize (a failed round). */
  int (*discard)(void* state);
  /* Optional: the method's state between versions (server moments, ...) for checkpoints and
   * hot reload; import_state gets what export_state emitted, possibly from an older version of
   * the plugin. NULL: stateless between versions. */
  int (*export_state)(void* state, flotilla_output* out);
  int (*import_state)(void* state, const flotilla_tensors* saved);
  void (*destroy)(void* state);
} flotilla_aggregator_api;

/* Kind FLOTILLA_KIND_OPTIMIZER. */
typedef struct flotilla_optimizer_api {
  size_t struct_size;
  /* Creates a state for these parameters (their names, shapes, dtypes and device). */
  int (*create)(const flotilla_host* host, const flotilla_options* options,
                const flotilla_tensors* params, void** state);
  /* One step: updates `params` in place from `grads` (same names and order as at create; a
   * gradient with data == NULL means the parameter received none this step). */
  int (*step)(void* state, const flotilla_tensors* params, const flotilla_tensors* grads);
  /* Bytes of optimizer state held (moments, projections). */
  int (*state_bytes)(void* state, uint64_t* bytes);
  int (*save)(void* state, flotilla_output* out);
  int (*load)(void* state, const flotilla_tensors* saved);
  void (*destroy)(void* state);
} flotilla_optimizer_api;

typedef struct flotilla_plugin {
  size_t struct_size;
  uint32_t abi_major; /* FLOTILLA_PLUGIN_ABI_MAJOR the plugin was built with */
  uint32_t abi_minor;
  flotilla_plugin_kind kind;
  const char* name;    /* unique among loaded plugins, e.g. "fedavg" */
  const char* version; /* e.g. "1.2.0" */
  const char* description;
  const flotilla_option_spec* options;
  size_t option_count;
  const flotilla_aggregator_api* aggregator; /* kind == FLOTILLA_KIND_AGGREGATOR */
  const flotilla_optimizer_api* optimizer;   /* kind == FLOTILLA_KIND_OPTIMIZER */
  /* Since ABI 1.1 (read only when struct_size covers it; 0 for older plugins): an OR of
   * flotilla_aggregator_flag. */
  uint32_t aggregator_flags;
} flotilla_plugin;

/* The entry point. Returns FLOTILLA_OK and sets *plugin to a description that stays valid
 * until the library is unloaded, or a status and a message (host->set_error). */
typedef int (*flotilla_plugin_entry_v1)(const flotilla_host* host, const flotilla_plugin** plugin);

#ifdef __cplusplus
}
#endif

#endif /* FLOTILLA_PLUGIN_H */
