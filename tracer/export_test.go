// SPDX-License-Identifier: Apache-2.0

package tracer

// DiagTimewait is diagTimewait for the kernel tests.
var DiagTimewait = diagTimewait
