// userd/version.hpp: the libuserd version this header belongs to, for embedders that build against more than
// one (meson's project version; a unit test checks the two agree).
#pragma once

#define USERD_VERSION_MAJOR 0
#define USERD_VERSION_MINOR 1
#define USERD_VERSION_PATCH 0
#define USERD_VERSION_STRING "0.1.0"
