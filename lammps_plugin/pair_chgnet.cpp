/* pair_style chgnet: the LAMMPS side. Builds the model's graph from the full
   neighbour list, runs the TorchScript model (chgnet_model.cpp) and returns
   energy, forces, global (and, serial only, per-atom) virial and per-atom
   energy.

   Serial graph (one MPI rank, "parallel serial"): nodes are the local atoms
   of the types mapped to an element. A neighbour j of local atom i within
   the model cutoff becomes the edge i -> owner(j) with the integer image
   shift S that takes owner(j) to j, found by atom ID (tag). Edge vectors
   are x_j - x_i, i.e. r_owner + S.cell - r_i as the model contract asks.
   Every pair is taken once, from its canonical side, and entered in both
   directions with exactly negated vectors, so the list is symmetric to the
   last bit. All forces land on local atoms (no ghost forces).

   Unfolded graph (many ranks, "parallel exchange" or "shell"): nodes are
   all local and ghost atoms, node index = LAMMPS index, shifts zero. The
   energy is the sum of the site energies of local atoms only; forces on
   ghost atoms go back to their owners by LAMMPS' reverse communication
   (newton_pair on). In exchange mode the model runs segment by segment and
   the ghost rows of the atom features are overwritten by their owners'
   after each exchange point (pack/unpack_forward_comm); in the backward
   pass the adjoints of ghost rows are added to their owners' rows
   (pack/unpack_reverse_comm). Ghost-ghost edges are kept only below the
   short-bond cutoff: ghost atoms need correct bonds and angles (recomputed
   redundantly in the halo), their own atom convolutions are overwritten at
   the next exchange. See docs/design.md (section 2) and README.md.

   Gathered graph (many ranks, "parallel gather"): every rank sends its
   local atoms and the pairs within the model cutoff that start at them
   (each pair once, from the lower atom ID, with the vector x_j - x_i of its
   neighbour list) to rank 0, which solves each pair's image shift from the
   gathered positions, builds the serial graph of all atoms (node = gathered
   atom), evaluates it and scatters per-atom forces, site energies, magmoms
   and virials back to the owners (compute_gathered).

   Forces F_i = sum_j g_ij - sum_j g_ji and virial W = -sum r_ij (x) g_ij
   over this rank's edges, with g = dE/d(edge vectors); LAMMPS sums W over
   ranks and its virial has the sign of W (positive pressure for
   repulsion). fdotr is switched off: the virial is accumulated here. */

#include "pair_chgnet.h"

#include "chgnet_model.h"

#include "atom.h"
#include "citeme.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "json.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

using namespace LAMMPS_NS;

static const char cite_chgnet[] =
    "pair_style chgnet (crossfunctional plugin):\n\n"
    "@article{deng2023chgnet,\n"
    " author = {Deng, Bowen and Zhong, Peichen and Jun, KyuJung and Riebesell, Janosh and Han, Kevin"
    " and Bartel, Christopher J. and Ceder, Gerbrand},\n"
    " title = {{CHGNet} as a pretrained universal neural network potential for charge-informed"
    " atomistic modelling},\n"
    " journal = {Nature Machine Intelligence}, volume = {5}, pages = {1031--1041}, year = {2023}\n}\n\n"
    "@article{huang2025crossfunctional,\n"
    " author = {Huang, Xiaoxi and others},\n"
    " title = {Cross-functional transferability in universal machine learning interatomic"
    " potentials},\n"
    " journal = {npj Computational Materials}, year = {2025}\n}\n\n";

static const double MIN_DISTANCE = 0.5;    // Angstrom, as the ASE calculator

// F_i += g_ij and F_j -= g_ij for every edge i -> j, g = dE/d(edge vector)
// [3 * E] (docs/design.md); i and j are LAMMPS atom indices (owners or ghosts)
static void add_edge_forces(double **f, const std::vector<int> &edge_i, const std::vector<int> &edge_j,
                            const std::vector<double> &g)
{
  for (size_t k = 0; k < edge_i.size(); k++) {
    const double *gk = &g[3 * k];
    double *fi = f[edge_i[k]];
    double *fj = f[edge_j[k]];
    for (int d = 0; d < 3; d++) {
      fi[d] += gk[d];
      fj[d] -= gk[d];
    }
  }
}

static const char *mode_name(int mode)
{
  static const char *names[] = {"auto", "serial", "exchange", "shell", "gather"};
  return names[mode];
}

// the integer image shift s with d = s0 a + s1 b + s2 c, for the box rows
// a = (xprd, 0, 0), b = (xy, yprd, 0), c = (xz, yz, zprd) (domain->h =
// xprd, yprd, zprd, yz, xz, xy); false if d is no lattice vector within tol
static bool image_shift(const double *h, double d0, double d1, double d2, double tol, int64_t s[3])
{
  s[2] = std::llround(d2 / h[2]);
  s[1] = std::llround((d1 - s[2] * h[3]) / h[1]);
  s[0] = std::llround((d0 - s[1] * h[5] - s[2] * h[4]) / h[0]);
  const double r0 = d0 - (s[0] * h[0] + s[1] * h[5] + s[2] * h[4]);
  const double r1 = d1 - (s[1] * h[1] + s[2] * h[3]);
  const double r2 = d2 - s[2] * h[2];
  return std::fabs(r0) <= tol && std::fabs(r1) <= tol && std::fabs(r2) <= tol;
}

static bool positive_shift(const int64_t s[3])
{
  return s[0] > 0 || (s[0] == 0 && (s[1] > 0 || (s[1] == 0 && s[2] > 0)));
}

namespace {
// the model's exchange hooks, on LAMMPS' forward and reverse communication
class CommExchange : public crossfunctional::FeatureExchange {
 public:
  explicit CommExchange(PairCHGNet *pair) : pair(pair) {}
  void forward(std::vector<double> &rows, int width) override { pair->exchange_rows(rows, width, true); }
  void reverse(std::vector<double> &rows, int width) override { pair->exchange_rows(rows, width, false); }

 private:
  PairCHGNet *pair;
};
}    // namespace

/* ---------------------------------------------------------------------- */

PairCHGNet::PairCHGNet(LAMMPS *lmp) :
    Pair(lmp), graph(new crossfunctional::GraphInput), result(new crossfunctional::GraphOutput),
    cutoff(0.0), nthreads(0), parallel_keyword(AUTO), mass_check(MASS_ERROR), mode(SERIAL), cutghost_set(0.0), gather_wait(0.0), gather_threads(0), root_node(false), report_graph(false),
    comm_rows(nullptr), comm_width(0), comm_float(false), magmom(nullptr), nmax_magmom(0)
{
  if (lmp->citeme) lmp->citeme->add(cite_chgnet);
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  // the virial is summed over this rank's edges here (serial: forces go to
  // local atoms only, ghosts are folded onto owners, so f.r cannot give it)
  no_virial_fdotr_compute = 1;
  // the per-atom virial is the even split of each edge's r (x) g, not a
  // centroid stress
  centroidstressflag = CENTROID_NOTAVAIL;
}

/* ---------------------------------------------------------------------- */

PairCHGNet::~PairCHGNet()
{
  memory->destroy(magmom);
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

/* ---------------------------------------------------------------------- */

void PairCHGNet::allocate()
{
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
  memory->create(cutsq, n, n, "pair:cutsq");
  type_z.assign(n, 0);
}

/* ----------------------------------------------------------------------
   conditions the serial pair style needs; checked at pair_style and at init
------------------------------------------------------------------------- */

void PairCHGNet::check_environment(const char *where)
{
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR,
               "{} requires 'units metal' (eV, Angstrom, ps), but this input "
               "uses 'units {}'",
               where, update->unit_style);
  if (domain->dimension != 3)
    error->all(FLERR, "{} requires a 3d simulation (dimension 3)", where);
}

/* ----------------------------------------------------------------------
   pair_style chgnet model.pt [threads N] [device cpu|cuda[:k]]
                              [parallel auto|serial|gather|exchange|shell]
                              [check_masses yes|warn|no] [retain_memory yes|no]
------------------------------------------------------------------------- */

namespace {
// standard atomic weights (IUPAC, amu) of Z = 1..94, to check the masses of the
// atom types against the elements that pair_coeff maps them to
const double STANDARD_MASS[94] = {
    1.008, 4.0026, 6.94, 9.0122, 10.81, 12.011, 14.007, 15.999, 18.998, 20.180,
    22.990, 24.305, 26.982, 28.085, 30.974, 32.06, 35.45, 39.948, 39.098, 40.078,
    44.956, 47.867, 50.942, 51.996, 54.938, 55.845, 58.933, 58.693, 63.546, 65.38,
    69.723, 72.630, 74.922, 78.971, 79.904, 83.798, 85.468, 87.62, 88.906, 91.224,
    92.906, 95.95, 97.907, 101.07, 102.91, 106.42, 107.87, 112.41, 114.82, 118.71,
    121.76, 127.60, 126.90, 131.29, 132.91, 137.33, 138.91, 140.12, 140.91, 144.24,
    144.91, 150.36, 151.96, 157.25, 158.93, 162.50, 164.93, 167.26, 168.93, 173.05,
    174.97, 178.49, 180.95, 183.84, 186.21, 190.23, 192.22, 195.08, 196.97, 200.59,
    204.38, 207.2, 208.98, 208.98, 209.99, 222.02, 223.02, 226.03, 227.03, 232.04,
    231.04, 238.03, 237.05, 244.06};
// a type's mass may be rounded (e.g. 28 for Si) but not be another element's
constexpr double MASS_TOLERANCE = 0.6;

// Keep freed memory in the process heap for reuse (glibc; process-wide), as
// the ASE calculator's retain_memory does. glibc serves every allocation above
// 32 MB with a fresh mmap and unmaps it when freed, so each large intermediate
// tensor of a big graph is page-faulted in again at every step; with mmap off
// for malloc and no trimming of the heap, a step reuses the previous step's
// blocks. The process then keeps its peak heap. Returns false where it could
// not be applied (another C library).
bool retain_freed_memory()
{
#if defined(__GLIBC__)
  return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, 2147483647) == 1;
#else
  return false;
#endif
}
}    // namespace

/* ---------------------------------------------------------------------- */

void PairCHGNet::settings(int narg, char **arg)
{
  check_environment("pair_style chgnet");
  if (narg < 1)
    error->all(FLERR,
               "Illegal pair_style chgnet command: expected 'pair_style chgnet <model.pt> "
               "[threads N] [device cpu|cuda] [parallel auto|serial|gather|exchange|shell] "
               "[check_masses yes|warn|no] [retain_memory yes|no]'");
  std::string file = arg[0];
  std::string device = "cpu";
  int threads = 0;
  int parallel = AUTO;
  int masses = MASS_ERROR;
  bool retain = true;
  for (int iarg = 1; iarg < narg; iarg += 2) {
    const std::string key = arg[iarg];
    if (iarg + 1 >= narg)
      error->all(FLERR, "Illegal pair_style chgnet command: keyword '{}' needs a value", key);
    if (key == "threads") {
      threads = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (threads < 1)
        error->all(FLERR, "Illegal pair_style chgnet command: threads must be >= 1, got {}",
                   threads);
    } else if (key == "device") {
      device = arg[iarg + 1];
    } else if (key == "parallel") {
      const std::string value = arg[iarg + 1];
      parallel = -1;
      for (int m = AUTO; m < NMODES; m++)
        if (value == mode_name(m)) parallel = m;
      if (parallel < 0)
        error->all(FLERR,
                   "Illegal pair_style chgnet command: parallel '{}' unknown (known: auto, "
                   "serial, gather, exchange, shell)",
                   value);
    } else if (key == "check_masses") {
      const std::string value = arg[iarg + 1];
      if (value == "yes")
        masses = MASS_ERROR;
      else if (value == "warn")
        masses = MASS_WARN;
      else if (value == "no")
        masses = MASS_IGNORE;
      else
        error->all(FLERR,
                   "Illegal pair_style chgnet command: check_masses '{}' unknown (known: yes, "
                   "warn, no)",
                   value);
    } else if (key == "retain_memory") {
      const std::string value = arg[iarg + 1];
      if (value != "yes" && value != "no")
        error->all(FLERR,
                   "Illegal pair_style chgnet command: retain_memory '{}' unknown (known: yes, "
                   "no)",
                   value);
      retain = value == "yes";
    } else {
      error->all(FLERR,
                 "Illegal pair_style chgnet command: unknown keyword '{}' (known: threads, "
                 "device, parallel, check_masses, retain_memory)",
                 key);
    }
  }

  if (!platform::file_is_readable(file))
    error->all(FLERR,
               "pair_style chgnet: model file '{}' not found or not readable; write one with "
               "'crossfunctional export chgnet-r2scan -o {}'",
               file, file);
  try {
    model.reset(new crossfunctional::TorchModel(file, device));
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_style chgnet: {}", e.what());
  }
  if (threads > 0) crossfunctional::TorchModel::set_num_threads(threads);
  const bool retained = retain && model->device_name().rfind("cpu", 0) == 0 && retain_freed_memory();
  nthreads = crossfunctional::TorchModel::num_threads();
  model_file = file;
  parallel_keyword = parallel;
  mass_check = masses;
  cutoff = model->cutoff();
  // one row of atom features per atom in the exchange
  comm_forward = comm_reverse = static_cast<int>(model->feature_width());
  // a float32 model's features travel as float32 in the forward exchange
  comm_float = model->dtype_name() == "float32";
  if (!(cutoff > 0.0))
    error->all(FLERR, "pair_style chgnet: model '{}' has a non-positive cutoff {}", file, cutoff);

  elements.clear();
  model_name = file;
  try {
    auto meta = json::parse(model->metadata_json());
    if (meta.contains("model_name")) model_name = meta["model_name"].get<std::string>();
    for (const auto &el : meta.at("elements")) elements.push_back(el.get<std::string>());
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_style chgnet: model '{}' has unreadable metadata (elements): {}", file,
               e.what());
  }
  if (elements.empty())
    error->all(FLERR, "pair_style chgnet: model '{}' lists no elements in its metadata", file);

  if (comm->me == 0)
    utils::logmesg(lmp,
                   "pair_style chgnet: model {} from {}, cutoff {} Angstrom, {} elements ({}..{}), "
                   "{} on {}, {} torch thread(s){}{}\n",
                   model_name, file, cutoff, elements.size(), elements.front(), elements.back(),
                   model->dtype_name(), model->device_name(), nthreads,
                   model->compiled() ? ", network compiled ahead of time (serial and gather passes)" : "",
                   retained ? ", freed memory kept for reuse" : "");

  // a new model may cover other elements: the type map must be given again
  if (allocated) {
    for (int i = 0; i <= atom->ntypes; i++)
      for (int j = 0; j <= atom->ntypes; j++) setflag[i][j] = 0;
    type_z.assign(atom->ntypes + 1, 0);
  }
}

/* ----------------------------------------------------------------------
   pair_coeff * * El1 El2 ... (one element symbol or NULL per atom type)
------------------------------------------------------------------------- */

void PairCHGNet::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 2 + ntypes)
    error->all(FLERR,
               "pair_coeff for chgnet: expected 'pair_coeff * * <element or NULL for each of the "
               "{} atom types>', got {} element argument(s)",
               ntypes, narg - 2);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for chgnet must start with '* *' (one line maps all types)");

  for (int t = 1; t <= ntypes; t++) {
    const std::string symbol = arg[t + 1];
    if (symbol == "NULL") {
      if (force->pair == this)    // not a sub-style of hybrid/overlay
        error->all(FLERR,
                   "pair_coeff for chgnet: atom type {} has no element (NULL); NULL is only for "
                   "types left to another style under pair_style hybrid/overlay",
                   t);
      type_z[t] = 0;
      continue;
    }
    int z = 0;
    for (size_t k = 0; k < elements.size(); k++)
      if (elements[k] == symbol) {
        z = static_cast<int>(k) + 1;
        break;
      }
    if (z == 0)
      error->all(FLERR,
                 "pair_coeff for chgnet: element '{}' (atom type {}) is not covered by model {}, "
                 "which knows {} elements from {} to {} (symbols are case sensitive; use NULL "
                 "for types handled by another pair style under hybrid/overlay)",
                 symbol, t, model_name, elements.size(), elements.front(), elements.back());
    type_z[t] = z;
  }

  int count = 0;
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++)
      if (type_z[i] > 0 && type_z[j] > 0) {
        setflag[i][j] = 1;
        count++;
      } else {
        setflag[i][j] = 0;
      }
  if (count == 0)
    error->all(FLERR, "pair_coeff for chgnet: every atom type is NULL, nothing to compute");
}

/* ----------------------------------------------------------------------
   the mass of every mapped type must be its element's (within MASS_TOLERANCE):
   a pair_coeff line in another order than the data file's types swaps the
   elements silently otherwise
------------------------------------------------------------------------- */

void PairCHGNet::check_masses()
{
  if (mass_check == MASS_IGNORE || atom->mass == nullptr || atom->mass_setflag == nullptr) return;
  for (int t = 1; t <= atom->ntypes; t++) {
    const int z = type_z[t];
    if (z <= 0 || z > 94 || !atom->mass_setflag[t]) continue;
    const double expected = STANDARD_MASS[z - 1];
    if (std::fabs(atom->mass[t] - expected) <= MASS_TOLERANCE) continue;
    const std::string message = fmt::format(
        "pair_style chgnet: atom type {} is mapped to {} by pair_coeff, but its mass is {:g} amu, "
        "not {}'s {:g} amu: check the order of the elements in pair_coeff against the types "
        "(add 'check_masses warn' or 'check_masses no' to pair_style for isotopes or scaled masses)",
        t, elements[z - 1], atom->mass[t], elements[z - 1], expected);
    if (mass_check == MASS_ERROR)
      error->all(FLERR, message);
    else
      error->warning(FLERR, message);
  }
}

/* ---------------------------------------------------------------------- */

namespace {
// parallel gather: graphs smaller than this are evaluated on one thread. On
// two, Si 64 (2,852 directed edges) ran 0.93x to 1.22x as fast as one rank
// from run to run, on one it runs steadily at about 1x, and the waiting
// rank's polling then has a core to itself (benchmarks/results/lammps_mpi)
constexpr size_t GATHER_ONE_THREAD_EDGES = 5000;
}    // namespace

void PairCHGNet::init_style()
{
  check_environment("pair_style chgnet");
  if (!model) error->all(FLERR, "pair_style chgnet: no model loaded");
  if (atom->tag_enable == 0)
    error->all(FLERR, "pair_style chgnet requires atom IDs (atom_modify id yes)");
  check_masses();

  mode = parallel_keyword;
  if (mode == AUTO) mode = comm->nprocs > 1 ? choose_mode() : SERIAL;
  if (mode == SERIAL && comm->nprocs > 1)
    error->all(FLERR,
               "pair_style chgnet: 'parallel serial' folds ghost atoms onto local atoms and "
               "runs on a single MPI rank only, this run has {} ranks; use 'parallel auto' "
               "(the default), 'gather' or 'exchange'",
               comm->nprocs);
  // gather: rank 0 evaluates with the threads of every rank on its node, which
  // sleep meanwhile; any other mode: each rank its own threads
  gather_threads = mode == GATHER ? node_threads() : nthreads;
  if (comm->me == 0) crossfunctional::TorchModel::set_num_threads(gather_threads);
  if (mode == SERIAL || mode == GATHER) {
    // the model cutoff + skin is the ghost cutoff (from init_one), as serial
    if (mode == GATHER && comm->me == 0)
      utils::logmesg(lmp,
                     "pair_style chgnet: parallel gather on {} MPI rank(s): rank 0 evaluates the "
                     "whole system on {} torch thread(s) (those of the ranks on its node; 1 for "
                     "graphs under {} directed edges), the other ranks wait\n",
                     comm->nprocs, gather_threads, GATHER_ONE_THREAD_EDGES);
    neighbor->add_request(this, NeighConst::REQ_FULL);
    report_graph = mode == GATHER;
    return;
  }

  // unfolded graph: exchange or shell
  if (model->num_segments() < 1)
    error->all(FLERR,
               "pair_style chgnet: model {} has no segment methods (seg_first, seg_mid, "
               "seg_last), which 'parallel {}' needs; it was exported by an older "
               "crossfunctional: export it again",
               model_file, mode_name(mode));
  if (force->newton_pair == 0)
    error->all(FLERR,
               "pair_style chgnet: 'parallel {}' puts forces on ghost atoms and needs "
               "'newton on' (or 'newton on off' for pair interactions); this input has newton "
               "pair off",
               mode_name(mode));
  if (comm->style != Comm::BRICK)
    error->all(FLERR,
               "pair_style chgnet: 'parallel {}' supports comm_style brick only (its "
               "feature exchange is not implemented or tested for comm_style tiled); use "
               "comm_style brick",
               mode_name(mode));
  if (comm->mode != 0)
    error->all(FLERR,
               "pair_style chgnet: 'parallel {}' needs comm_modify mode single (one ghost "
               "cutoff for all atom types)",
               mode_name(mode));

  // ghost cutoff: the halo the mode needs plus the neighbour skin, so that it
  // holds until the next reneighbouring
  const double needed = ghost_cutoff_needed() + neighbor->skin;
  const bool user_set = comm->cutghostuser > 0.0 && comm->cutghostuser != cutghost_set;
  if (user_set && comm->cutghostuser < needed)
    error->all(FLERR,
               "pair_style chgnet: the ghost cutoff (comm_modify cutoff {}) is too small for "
               "'parallel {}', which needs {} Angstrom ({} + neighbour skin {}); remove the "
               "comm_modify cutoff (the pair style then sets it) or raise it to at least {}",
               comm->cutghostuser, mode_name(mode), needed, ghost_cutoff_needed(), neighbor->skin,
               needed);
  if (comm->cutghostuser < needed) comm->cutghostuser = needed;
  cutghost_set = comm->cutghostuser;
  if (comm->me == 0)
    utils::logmesg(lmp,
                   "pair_style chgnet: parallel {} on {} MPI rank(s), ghost cutoff {} Angstrom\n",
                   mode_name(mode), comm->nprocs, comm->cutghostuser);
  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
  report_graph = true;
}

/* ----------------------------------------------------------------------
   torch threads of all ranks that share a node with rank 0 (each rank's
   'threads' setting summed): the threads rank 0 uses in parallel gather
------------------------------------------------------------------------- */

int PairCHGNet::node_threads()
{
  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node);
  int lowest = comm->me;
  MPI_Allreduce(&comm->me, &lowest, 1, MPI_INT, MPI_MIN, node);
  MPI_Comm_free(&node);
  root_node = lowest == 0;
  const int mine = root_node ? nthreads : 0;
  int total = nthreads;
  MPI_Allreduce(&mine, &total, 1, MPI_INT, MPI_SUM, world);
  return std::max(total, 1);
}

/* ----------------------------------------------------------------------
   parallel auto on many ranks: gather or exchange. Exchange makes every rank
   compute its subdomain plus a halo of ghost atoms out to the exchange
   ghost cutoff (12 A + skin) in every direction, periodic images included;
   gather evaluates the whole system once on rank 0. The halo is estimated
   from the subdomain's shape (its volume grown by the ghost cutoff over its
   own), the atom count per rank from the total. Exchange is chosen when
   the subdomains hold at least AUTO_MIN_ATOMS atoms each and the halo at
   most AUTO_MAX_HALO times the subdomain (values from timings of both
   modes on 2 ranks, README.md), else gather.
------------------------------------------------------------------------- */

namespace {
constexpr double AUTO_MIN_ATOMS = 1000.0;
constexpr double AUTO_MAX_HALO = 4.0;
}    // namespace

int PairCHGNet::choose_mode()
{
  const int nprocs = comm->nprocs;
  const double per_rank = static_cast<double>(atom->natoms) / nprocs;
  if (model->num_segments() < 2) {
    if (comm->me == 0)
      utils::logmesg(lmp,
                     "pair_style chgnet: parallel auto: gather on {} MPI ranks (model {} has no "
                     "segment methods for the exchange)\n",
                     nprocs, model_name);
    return GATHER;
  }
  const double reach =
      std::max(cutoff, model->num_segments() * model->bond_cutoff()) + neighbor->skin;
  double halo = 1.0;
  for (int d = 0; d < 3; d++) {
    // thickness of the subdomain and of the box across lattice planes d
    double box, sub;
    if (domain->triclinic) {
      const double *hi = domain->h_inv;
      const double row[3][3] = {{hi[0], hi[5], hi[4]}, {0.0, hi[1], hi[3]}, {0.0, 0.0, hi[2]}};
      box = 1.0 / std::sqrt(row[d][0] * row[d][0] + row[d][1] * row[d][1] + row[d][2] * row[d][2]);
      sub = (domain->subhi_lamda[d] - domain->sublo_lamda[d]) * box;
    } else {
      box = domain->prd[d];
      sub = domain->subhi[d] - domain->sublo[d];
    }
    double grown = sub + 2.0 * reach;
    if (!domain->periodicity[d]) grown = std::min(grown, box);
    halo *= grown / std::max(sub, 1.0e-3);
  }
  double most = halo;
  MPI_Allreduce(&halo, &most, 1, MPI_DOUBLE, MPI_MAX, world);
  const bool exchange = per_rank >= AUTO_MIN_ATOMS && most <= AUTO_MAX_HALO;
  if (comm->me == 0)
    utils::logmesg(lmp,
                   "pair_style chgnet: parallel auto: {} on {} MPI ranks: {} atoms, {:.0f} per rank, "
                   "exchange halo {:.1f}x the subdomain (exchange needs >= {:.0f} atoms per rank "
                   "and a halo <= {:.0f}x)\n",
                   exchange ? "exchange" : "gather", nprocs, atom->natoms, per_rank, most,
                   AUTO_MIN_ATOMS, AUTO_MAX_HALO);
  return exchange ? EXCHANGE : GATHER;
}

/* ----------------------------------------------------------------------
   distance (without skin) out to which ghost atoms must be present.
   exchange: ghost atom features are exchanged, but the short bonds and
   angles of the halo are recomputed here: the last bond update needs
   short bonds at local atoms (ends within 3 A), each earlier one 3 A more,
   and the angles of a bond need the short-bond neighbours of its ends:
   n_conv x 3 A (12), at least the atom cutoff. shell: the receptive field
   of a site energy, n_conv x 6 A (24).
------------------------------------------------------------------------- */

double PairCHGNet::ghost_cutoff_needed() const
{
  const double nseg = model->num_segments();
  if (mode == SHELL) return nseg * cutoff;
  return std::max(cutoff, nseg * model->bond_cutoff());
}

/* ---------------------------------------------------------------------- */

double PairCHGNet::init_one(int i, int j)
{
  if (setflag[i][j] == 0 && force->pair == this)
    error->all(FLERR, "pair_style chgnet: atom types {} {} have no element (pair_coeff * * ...)", i, j);
  return cutoff;
}

/* ----------------------------------------------------------------------
   nodes, edges, shifts and vectors of the model graph (see top of file)
------------------------------------------------------------------------- */

void PairCHGNet::build_graph()
{
  double **x = atom->x;
  int *type = atom->type;
  tagint *tag = atom->tag;
  const int nlocal = atom->nlocal;
  const int inum = list->inum;
  int *ilist = list->ilist;
  int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;

  tagint maxtag = 0;
  for (int i = 0; i < nlocal; i++) maxtag = std::max(maxtag, tag[i]);
  tag_node.assign(static_cast<size_t>(maxtag) + 1, -1);

  node_local.clear();
  graph->atomic_numbers.clear();
  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    if (i >= nlocal || type_z[type[i]] == 0) continue;
    tag_node[tag[i]] = static_cast<int>(node_local.size());
    node_local.push_back(i);
    graph->atomic_numbers.push_back(type_z[type[i]]);
  }

  // box matrix (rows a, b, c): a = (xprd, 0, 0), b = (xy, yprd, 0), c = (xz, yz, zprd);
  // domain->h = (xprd, yprd, zprd, yz, xz, xy)
  const double *h = domain->h;
  const double cutsq_model = cutoff * cutoff;
  const double minsq = MIN_DISTANCE * MIN_DISTANCE;
  const double tol = 1.0e-6 * (1.0 + std::fabs(h[0]) + std::fabs(h[1]) + std::fabs(h[2]));

  std::vector<int64_t> src, dst;
  auto &shifts = graph->edge_shifts;
  auto &vectors = graph->edge_vectors;
  shifts.clear();
  vectors.clear();
  edge_i.clear();
  edge_j.clear();

  const int nnodes = static_cast<int>(node_local.size());
  for (int a = 0; a < nnodes; a++) {
    const int i = node_local[a];
    const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
    const int *jlist = firstneigh[i];
    const int jnum = numneigh[i];
    for (int jj = 0; jj < jnum; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      if (type_z[type[j]] == 0) continue;
      const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
      const double rsq = dx * dx + dy * dy + dz * dz;
      if (rsq >= cutsq_model) continue;
      const tagint tj = tag[j];
      const int b = (tj >= 0 && tj <= maxtag) ? tag_node[tj] : -1;
      if (b < 0)
        error->one(FLERR,
                   "pair_style chgnet: neighbour atom ID {} of atom ID {} has no owner among the "
                   "local atoms (serial folding of ghost atoms failed)",
                   tj, tag[i]);
      if (b < a) continue;    // this pair is taken from b's side
      int64_t s[3] = {0, 0, 0};
      if (j >= nlocal) {
        const int o = node_local[b];
        const double d0 = x[j][0] - x[o][0], d1 = x[j][1] - x[o][1], d2 = x[j][2] - x[o][2];
        if (!image_shift(h, d0, d1, d2, tol, s))
          error->one(FLERR,
                     "pair_style chgnet: ghost of atom ID {} is not a periodic image of it "
                     "(offset {} {} {} Angstrom)",
                     tj, d0, d1, d2);
      }
      // a periodic image of the atom itself: keep the shift that is
      // lexicographically positive, its reverse is the negative one
      if (b == a && !positive_shift(s)) continue;
      const int64_t s0 = s[0], s1 = s[1], s2 = s[2];
      if (rsq < minsq)
        error->one(FLERR,
                   "pair_style chgnet: atoms ID {} and {} are {:.4f} Angstrom apart, closer than "
                   "{} Angstrom",
                   tag[i], tj, std::sqrt(rsq), MIN_DISTANCE);
      const int jo = node_local[b];
      // i -> owner(j), shift S, vector d
      src.push_back(a);
      dst.push_back(b);
      shifts.insert(shifts.end(), {s0, s1, s2});
      vectors.insert(vectors.end(), {dx, dy, dz});
      edge_i.push_back(i);
      edge_j.push_back(jo);
      // owner(j) -> i, shift -S, vector -d
      src.push_back(b);
      dst.push_back(a);
      shifts.insert(shifts.end(), {-s0, -s1, -s2});
      vectors.insert(vectors.end(), {-dx, -dy, -dz});
      edge_i.push_back(jo);
      edge_j.push_back(i);
    }
  }
  auto &edge_index = graph->edge_index;
  edge_index.resize(src.size() + dst.size());
  std::copy(src.begin(), src.end(), edge_index.begin());
  std::copy(dst.begin(), dst.end(), edge_index.begin() + src.size());
}

/* ---------------------------------------------------------------------- */

void PairCHGNet::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);

  if (atom->nmax > nmax_magmom) {
    memory->destroy(magmom);
    nmax_magmom = atom->nmax;
    memory->create(magmom, nmax_magmom, "pair:magmom");
  }
  const int nlocal = atom->nlocal;
  for (int i = 0; i < nlocal; i++) magmom[i] = 0.0;

  if (mode == GATHER) {
    compute_gathered();
    return;
  }
  if (mode != SERIAL) {
    compute_unfolded();
    return;
  }

  build_graph();
  const int nnodes = static_cast<int>(node_local.size());
  if (nnodes == 0) return;

  try {
    model->evaluate(*graph, *result);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style chgnet: model evaluation failed: {}", e.what());
  }

  double **f = atom->f;
  const std::vector<double> &g = result->grad;
  const std::vector<double> &r = graph->edge_vectors;
  const size_t nedges = edge_i.size();
  add_edge_forces(f, edge_i, edge_j, g);

  for (int a = 0; a < nnodes; a++) {
    const int i = node_local[a];
    const double e = result->site_energies[a];
    if (eflag_global) eng_vdwl += e;
    if (eflag_atom) eatom[i] += e;
    magmom[i] = result->magmoms[a];
  }

  if (vflag_either) {
    // W = -sum_k r_k (x) g_k; LAMMPS order xx, yy, zz, xy, xz, yz
    for (size_t k = 0; k < nedges; k++) {
      const double *gk = &g[3 * k];
      const double *rk = &r[3 * k];
      const double w[6] = {-rk[0] * gk[0], -rk[1] * gk[1], -rk[2] * gk[2],
                           -rk[0] * gk[1], -rk[0] * gk[2], -rk[1] * gk[2]};
      if (vflag_global)
        for (int m = 0; m < 6; m++) virial[m] += w[m];
      if (vflag_atom) {
        double *vi = vatom[edge_i[k]];
        double *vj = vatom[edge_j[k]];
        for (int m = 0; m < 6; m++) {
          vi[m] += 0.5 * w[m];
          vj[m] += 0.5 * w[m];
        }
      }
    }
  }
}

/* ----------------------------------------------------------------------
   unfolded graph of local + ghost atoms (see top of file)
------------------------------------------------------------------------- */

void PairCHGNet::build_unfolded_graph()
{
  double **x = atom->x;
  int *type = atom->type;
  tagint *tag = atom->tag;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;

  const double cutsq_model = cutoff * cutoff;
  // a little above the short-bond cutoff, so that rounding in the model's
  // float32 bond length cannot make a dropped ghost-ghost pair short
  const double short_cut = model->bond_cutoff() * (1.0 + 1.0e-4);
  const double shortsq = short_cut * short_cut;
  const double minsq = MIN_DISTANCE * MIN_DISTANCE;

  // candidate pairs i < j within the cutoff, each from its lower index;
  // in exchange mode ghost-ghost pairs only if short
  std::vector<int> pi, pj;
  std::vector<double> pr;
  const int ntotal = list->inum + list->gnum;
  int *ilist = list->ilist;
  int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  for (int ii = 0; ii < ntotal; ii++) {
    const int i = ilist[ii];
    if (type_z[type[i]] == 0) continue;
    const bool ghost_i = i >= nlocal;
    const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
    const int *jlist = firstneigh[i];
    const int jnum = numneigh[i];
    for (int jj = 0; jj < jnum; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      if (j <= i || type_z[type[j]] == 0) continue;
      const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
      const double rsq = dx * dx + dy * dy + dz * dz;
      if (rsq >= cutsq_model) continue;
      if (ghost_i && mode == EXCHANGE && rsq >= shortsq) continue;
      if (rsq < minsq)
        error->one(FLERR,
                   "pair_style chgnet: atoms ID {} and {} are {:.4f} Angstrom apart, closer than "
                   "{} Angstrom",
                   tag[i], tag[j], std::sqrt(rsq), MIN_DISTANCE);
      pi.push_back(i);
      pj.push_back(j);
      pr.insert(pr.end(), {dx, dy, dz, rsq});
    }
  }

  // exchange mode: keep a ghost-ghost short bond only where it is needed.
  // With exchanged atom features, the bond and angle features of short
  // bonds at local atoms after the last of n_conv - 1 bond updates are
  // right if every atom within H = n_conv - 1 short-bond hops of a local
  // atom has all its short bonds (and so all its angles) in the graph.
  std::vector<char> keep(pi.size(), 1);
  if (mode == EXCHANGE) {
    const int max_hop = model->num_segments() - 1;
    std::vector<int> degree(nall + 1, 0);
    for (size_t p = 0; p < pi.size(); p++)
      if (pr[4 * p + 3] < shortsq) {
        degree[pi[p] + 1]++;
        degree[pj[p] + 1]++;
      }
    for (int i = 0; i < nall; i++) degree[i + 1] += degree[i];
    std::vector<int> adjacent(degree[nall]), fill(degree.begin(), degree.end() - 1);
    for (size_t p = 0; p < pi.size(); p++)
      if (pr[4 * p + 3] < shortsq) {
        adjacent[fill[pi[p]]++] = pj[p];
        adjacent[fill[pj[p]]++] = pi[p];
      }
    hop.assign(nall, max_hop + 1);
    std::vector<int> front, next;
    for (int i = 0; i < nlocal; i++)
      if (type_z[type[i]] > 0) {
        hop[i] = 0;
        front.push_back(i);
      }
    for (int h = 1; h <= max_hop && !front.empty(); h++) {
      next.clear();
      for (int i : front)
        for (int k = degree[i]; k < degree[i + 1]; k++)
          if (hop[adjacent[k]] > h) {
            hop[adjacent[k]] = h;
            next.push_back(adjacent[k]);
          }
      front.swap(next);
    }
    for (size_t p = 0; p < pi.size(); p++)
      if (pi[p] >= nlocal && std::min(hop[pi[p]], hop[pj[p]]) > max_hop) keep[p] = 0;
  }

  // nodes: every local atom (node index = local index; NULL types are
  // isolated nodes with a placeholder element and weight 0), then the ghost
  // atoms that have an edge. Ghosts without one only relay the exchange.
  node_atom.resize(nlocal);
  for (int i = 0; i < nlocal; i++) node_atom[i] = i;
  atom_node.assign(nall, -1);
  for (int i = 0; i < nlocal; i++) atom_node[i] = i;
  for (size_t p = 0; p < pi.size(); p++)
    if (keep[p])
      for (int i : {pi[p], pj[p]})
        if (atom_node[i] < 0) {
          atom_node[i] = static_cast<int>(node_atom.size());
          node_atom.push_back(i);
        }
  const size_t nnodes = node_atom.size();
  graph->atomic_numbers.resize(nnodes);
  energy_weight.assign(nnodes, 0.0);
  for (size_t a = 0; a < nnodes; a++) {
    const int z = type_z[type[node_atom[a]]];
    graph->atomic_numbers[a] = z > 0 ? z : 1;
    if (node_atom[a] < nlocal && z > 0) energy_weight[a] = 1.0;
  }

  std::vector<int64_t> src, dst;
  auto &vectors = graph->edge_vectors;
  vectors.clear();
  edge_i.clear();
  edge_j.clear();
  for (size_t p = 0; p < pi.size(); p++) {
    if (!keep[p]) continue;
    const int i = pi[p], j = pj[p];
    const int a = atom_node[i], b = atom_node[j];
    const double *d = &pr[4 * p];
    src.insert(src.end(), {a, b});
    dst.insert(dst.end(), {b, a});
    vectors.insert(vectors.end(), {d[0], d[1], d[2], -d[0], -d[1], -d[2]});
    edge_i.insert(edge_i.end(), {i, j});
    edge_j.insert(edge_j.end(), {j, i});
  }
  graph->edge_shifts.assign(3 * src.size(), 0);
  auto &edge_index = graph->edge_index;
  edge_index.resize(src.size() + dst.size());
  std::copy(src.begin(), src.end(), edge_index.begin());
  std::copy(dst.begin(), dst.end(), edge_index.begin() + src.size());
}

/* ----------------------------------------------------------------------
   energy, forces (local and ghost) and global virial on the unfolded graph.
   Every rank gets here every step (compute is called on all ranks), so all
   take part in every exchange, also with no atoms.
------------------------------------------------------------------------- */

void PairCHGNet::compute_unfolded()
{
  if (vflag_atom)
    error->all(FLERR,
               "pair_style chgnet: the per-atom virial (compute stress/atom, centroid/stress/atom) "
               "is not available with 'parallel {}' (a rank's edge gradients are a different "
               "split of the virial than the serial one); it is available with 'parallel "
               "serial' on one MPI rank",
               mode_name(mode));
  build_unfolded_graph();
  CommExchange exchange(this);
  try {
    model->evaluate_segments(*graph, energy_weight, mode == EXCHANGE ? &exchange : nullptr,
                             *result);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style chgnet: model evaluation failed: {}", e.what());
  }

  if (report_graph) {
    // the halo's size: graph summed over ranks against the local atoms
    // (a serial graph has one node per atom)
    double mine[4] = {(double) atom->nlocal, (double) node_atom.size(), (double) edge_i.size(),
                      (double) result->num_angles};
    double sum[4], most[4];
    MPI_Allreduce(mine, sum, 4, MPI_DOUBLE, MPI_SUM, world);
    MPI_Allreduce(mine, most, 4, MPI_DOUBLE, MPI_MAX, world);
    if (comm->me == 0)
      utils::logmesg(lmp,
                     "pair_style chgnet: graph over {} rank(s): {:.0f} local atoms, {:.0f} nodes, "
                     "{:.0f} directed edges, {:.0f} angles (largest rank: {:.0f} local, {:.0f} "
                     "nodes, {:.0f} edges, {:.0f} angles)\n",
                     comm->nprocs, sum[0], sum[1], sum[2], sum[3], most[0], most[1], most[2],
                     most[3]);
    report_graph = false;
  }

  double **f = atom->f;
  const std::vector<double> &g = result->grad;
  const std::vector<double> &r = graph->edge_vectors;
  const size_t nedges = edge_i.size();
  add_edge_forces(f, edge_i, edge_j, g);

  const int nlocal = atom->nlocal;
  for (int i = 0; i < nlocal; i++) {    // node index = local index
    if (energy_weight[i] == 0.0) continue;
    const double e = result->site_energies[i];
    if (eflag_global) eng_vdwl += e;
    if (eflag_atom) eatom[i] += e;
    magmom[i] = result->magmoms[i];
  }

  if (vflag_global)
    for (size_t k = 0; k < nedges; k++) {
      const double *gk = &g[3 * k];
      const double *rk = &r[3 * k];
      virial[0] -= rk[0] * gk[0];
      virial[1] -= rk[1] * gk[1];
      virial[2] -= rk[2] * gk[2];
      virial[3] -= rk[0] * gk[1];
      virial[4] -= rk[0] * gk[2];
      virial[5] -= rk[1] * gk[2];
    }
}

/* ----------------------------------------------------------------------
   gather: the serial graph of the whole system on rank 0 (see top of file)
------------------------------------------------------------------------- */

namespace {
constexpr int ATOM_ROW = 5;    // gathered per atom: atom ID, Z, x, y, z
constexpr int PAIR_ROW = 5;    // gathered per pair: atom IDs i, j, x_j - x_i

// waits for a nonblocking collective, here rank 0's evaluation, mostly
// asleep, so that the waiting ranks leave their cores to rank 0 and to other
// jobs. After a previous wait of at least 0.1 s it sleeps in chunks of up to
// 20 ms until shortly (5 %, between 2 and 20 ms) before that wait's length:
// every wake-up of a rank that shares rank 0's cores preempts one of rank 0's
// OpenMP threads, and the others then wait for it at the next barrier. From
// then on, and throughout after shorter waits (small systems, where waking
// late costs more than the wake-ups), it polls: with 'spin' (rank 0 runs on
// other cores) without sleeping until 2 ms after the previous wait's length,
// else, and after that, with 100 us sleeps between polls.
// Returns the seconds waited.
double wait_sleeping(MPI_Request &request, double previous, bool spin)
{
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const double asleep_until =
      previous < 0.1 ? 0.0 : previous - std::max(std::min(0.05 * previous, 2.0e-2), 2.0e-3);
  const double awake_from = previous - std::min(0.1 * previous, 2.0e-3);
  int done = 0;
  MPI_Test(&request, &done, MPI_STATUS_IGNORE);
  while (!done) {
    const double waited = std::chrono::duration<double>(clock::now() - start).count();
    if (waited < asleep_until)
      std::this_thread::sleep_for(std::chrono::duration<double>(std::min(asleep_until - waited, 2.0e-2)));
    else if (!spin || waited < awake_from || waited > previous + 2.0e-3)
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
  }
  return std::chrono::duration<double>(clock::now() - start).count();
}
}    // namespace

void PairCHGNet::compute_gathered()
{
  double **x = atom->x;
  int *type = atom->type;
  tagint *tag = atom->tag;
  const int nlocal = atom->nlocal;
  const int me = comm->me, nprocs = comm->nprocs;
  const double *h = domain->h;
  const double cutsq_model = cutoff * cutoff;
  const double minsq = MIN_DISTANCE * MIN_DISTANCE;
  const double tol = 1.0e-6 * (1.0 + std::fabs(h[0]) + std::fabs(h[1]) + std::fabs(h[2]));

  // this rank's share: its atoms of a chgnet type, and the pairs within the
  // model cutoff that start at them, each once: from the lower atom ID, or
  // for an atom's own periodic images with the positive shift. The vector
  // x_j - x_i is the serial one (j: the neighbour, local or ghost).
  std::vector<double> atoms_out, pairs_out;
  node_local.clear();
  const int inum = list->inum;
  int *ilist = list->ilist;
  int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    if (i >= nlocal || type_z[type[i]] == 0) continue;
    node_local.push_back(i);
    const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
    atoms_out.insert(atoms_out.end(), {(double) tag[i], (double) type_z[type[i]], xi, yi, zi});
    const int *jlist = firstneigh[i];
    const int jnum = numneigh[i];
    for (int jj = 0; jj < jnum; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      if (type_z[type[j]] == 0) continue;
      const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
      const double rsq = dx * dx + dy * dy + dz * dz;
      if (rsq >= cutsq_model || tag[j] < tag[i]) continue;
      if (tag[j] == tag[i]) {
        int64_t s[3];
        if (!image_shift(h, dx, dy, dz, tol, s))
          error->one(FLERR,
                     "pair_style chgnet: ghost of atom ID {} is not a periodic image of it "
                     "(offset {} {} {} Angstrom)",
                     tag[i], dx, dy, dz);
        if (!positive_shift(s)) continue;
      }
      if (rsq < minsq)
        error->one(FLERR,
                   "pair_style chgnet: atoms ID {} and {} are {:.4f} Angstrom apart, closer than "
                   "{} Angstrom",
                   tag[i], tag[j], std::sqrt(rsq), MIN_DISTANCE);
      pairs_out.insert(pairs_out.end(), {(double) tag[i], (double) tag[j], dx, dy, dz});
    }
  }

  // to rank 0 (atom IDs travel as doubles: exact below 2^53)
  const int nmine = static_cast<int>(node_local.size());
  const int mine[2] = {nmine * ATOM_ROW, static_cast<int>(pairs_out.size())};
  std::vector<int> sizes(2 * nprocs), atom_count(nprocs), atom_displ(nprocs), pair_count(nprocs),
      pair_displ(nprocs);
  MPI_Gather(mine, 2, MPI_INT, sizes.data(), 2, MPI_INT, 0, world);
  size_t natoms_all = 0, npairs_all = 0;
  if (me == 0)
    for (int r = 0; r < nprocs; r++) {
      atom_count[r] = sizes[2 * r];
      pair_count[r] = sizes[2 * r + 1];
      atom_displ[r] = static_cast<int>(natoms_all);
      pair_displ[r] = static_cast<int>(npairs_all);
      natoms_all += atom_count[r];
      npairs_all += pair_count[r];
    }
  std::vector<double> atoms_in(me == 0 ? natoms_all : 0), pairs_in(me == 0 ? npairs_all : 0);
  MPI_Gatherv(atoms_out.data(), mine[0], MPI_DOUBLE, atoms_in.data(), atom_count.data(),
              atom_displ.data(), MPI_DOUBLE, 0, world);
  MPI_Gatherv(pairs_out.data(), mine[1], MPI_DOUBLE, pairs_in.data(), pair_count.data(),
              pair_displ.data(), MPI_DOUBLE, 0, world);

  // per atom back from rank 0: force (3), site energy, magmom[, virial (6)]
  const int width = vflag_atom ? 11 : 5;
  std::vector<double> rows;
  if (me == 0) {
    const size_t nnodes = natoms_all / ATOM_ROW;
    const size_t npairs = npairs_all / PAIR_ROW;
    tagint maxtag = 0;
    for (size_t a = 0; a < nnodes; a++) maxtag = std::max(maxtag, (tagint) atoms_in[a * ATOM_ROW]);
    tag_node.assign(static_cast<size_t>(maxtag) + 1, -1);
    graph->atomic_numbers.resize(nnodes);
    for (size_t a = 0; a < nnodes; a++) {
      tag_node[(tagint) atoms_in[a * ATOM_ROW]] = static_cast<int>(a);
      graph->atomic_numbers[a] = static_cast<int64_t>(atoms_in[a * ATOM_ROW + 1]);
    }
    // both directions of every pair, as build_graph; edge_i/j: graph nodes
    std::vector<int64_t> src, dst;
    auto &shifts = graph->edge_shifts;
    auto &vectors = graph->edge_vectors;
    shifts.clear();
    vectors.clear();
    edge_i.clear();
    edge_j.clear();
    for (size_t p = 0; p < npairs; p++) {
      const double *q = &pairs_in[p * PAIR_ROW];
      const tagint ti = (tagint) q[0], tj = (tagint) q[1];
      const int a = tag_node[ti];
      const int b = tj <= maxtag ? tag_node[tj] : -1;
      if (b < 0)
        error->one(FLERR,
                   "pair_style chgnet: neighbour atom ID {} of atom ID {} is not among the "
                   "gathered atoms",
                   tj, ti);
      const double *xa = &atoms_in[a * ATOM_ROW + 2], *xb = &atoms_in[b * ATOM_ROW + 2];
      const double dx = q[2], dy = q[3], dz = q[4];
      int64_t s[3] = {0, 0, 0};
      if (!image_shift(h, xa[0] + dx - xb[0], xa[1] + dy - xb[1], xa[2] + dz - xb[2], tol, s))
        error->one(FLERR,
                   "pair_style chgnet: neighbour of atom ID {} is not a periodic image of atom "
                   "ID {}",
                   ti, tj);
      src.insert(src.end(), {a, b});
      dst.insert(dst.end(), {b, a});
      shifts.insert(shifts.end(), {s[0], s[1], s[2], -s[0], -s[1], -s[2]});
      vectors.insert(vectors.end(), {dx, dy, dz, -dx, -dy, -dz});
      edge_i.insert(edge_i.end(), {a, b});
      edge_j.insert(edge_j.end(), {b, a});
    }
    auto &edge_index = graph->edge_index;
    edge_index.resize(src.size() + dst.size());
    std::copy(src.begin(), src.end(), edge_index.begin());
    std::copy(dst.begin(), dst.end(), edge_index.begin() + src.size());

    rows.assign(nnodes * width, 0.0);
    if (nnodes > 0) {
      const int threads = edge_i.size() < GATHER_ONE_THREAD_EDGES ? 1 : gather_threads;
      if (threads != crossfunctional::TorchModel::num_threads())
        crossfunctional::TorchModel::set_num_threads(threads);
      try {
        model->evaluate(*graph, *result);
      } catch (const std::exception &e) {
        error->one(FLERR, "pair_style chgnet: model evaluation failed: {}", e.what());
      }
      const std::vector<double> &g = result->grad;
      const std::vector<double> &r = graph->edge_vectors;
      for (size_t k = 0; k < edge_i.size(); k++) {
        const double *gk = &g[3 * k];
        double *fi = &rows[edge_i[k] * width];
        double *fj = &rows[edge_j[k] * width];
        for (int d = 0; d < 3; d++) {
          fi[d] += gk[d];
          fj[d] -= gk[d];
        }
        if (vflag_either) {
          // W = -sum_k r_k (x) g_k, as serial; only rank 0 adds to the global virial
          const double *rk = &r[3 * k];
          const double w[6] = {-rk[0] * gk[0], -rk[1] * gk[1], -rk[2] * gk[2],
                               -rk[0] * gk[1], -rk[0] * gk[2], -rk[1] * gk[2]};
          if (vflag_global)
            for (int m = 0; m < 6; m++) virial[m] += w[m];
          if (vflag_atom)
            for (int m = 0; m < 6; m++) {
              fi[5 + m] += 0.5 * w[m];
              fj[5 + m] += 0.5 * w[m];
            }
        }
      }
      for (size_t a = 0; a < nnodes; a++) {
        rows[a * width + 3] = result->site_energies[a];
        rows[a * width + 4] = result->magmoms[a];
      }
    }
    if (report_graph)
      utils::logmesg(lmp,
                     "pair_style chgnet: parallel gather: graph of {} atoms and {} directed edges "
                     "on rank 0 of {}\n",
                     nnodes, edge_i.size(), nprocs);
    for (int r = 0; r < nprocs; r++) {
      atom_count[r] = atom_count[r] / ATOM_ROW * width;
      atom_displ[r] = atom_displ[r] / ATOM_ROW * width;
    }
  }
  report_graph = false;

  // back to the owners; rank 0 evaluates while the others wait
  std::vector<double> back(static_cast<size_t>(nmine) * width);
  MPI_Request request;
  MPI_Iscatterv(rows.data(), atom_count.data(), atom_displ.data(), MPI_DOUBLE, back.data(),
                nmine * width, MPI_DOUBLE, 0, world, &request);
  if (me == 0)
    MPI_Wait(&request, MPI_STATUS_IGNORE);
  else
    gather_wait = wait_sleeping(request, gather_wait, !root_node);  // rank 0 runs on our core: no spinning

  double **f = atom->f;
  for (int k = 0; k < nmine; k++) {
    const int i = node_local[k];
    const double *row = &back[static_cast<size_t>(k) * width];
    for (int d = 0; d < 3; d++) f[i][d] += row[d];
    if (eflag_global) eng_vdwl += row[3];
    if (eflag_atom) eatom[i] += row[3];
    magmom[i] = row[4];
    if (vflag_atom)
      for (int m = 0; m < 6; m++) vatom[i][m] += row[5 + m];
  }
}

/* ----------------------------------------------------------------------
   exchange of per-atom rows (atom features or their adjoints), one row of
   comm_forward doubles per local + ghost atom
------------------------------------------------------------------------- */

void PairCHGNet::exchange_rows(std::vector<double> &rows, int width, bool forward)
{
  const int nlocal = atom->nlocal;
  const size_t nall = static_cast<size_t>(nlocal) + atom->nghost;
  const size_t nnodes = node_atom.size();
  if (width != comm_forward || rows.size() != nnodes * width)
    error->one(FLERR,
               "pair_style chgnet: exchange of {} values of width {} for {} graph nodes (width {})",
               rows.size(), width, nnodes, comm_forward);
  // graph node rows <-> one row per local + ghost atom: forward comm
  // overwrites every ghost row (relaying ghosts that are no graph node),
  // reverse comm adds every ghost row to its owner
  comm_buffer.assign(nall * width, 0.0);
  for (size_t a = 0; a < nnodes; a++)
    std::copy(&rows[a * width], &rows[a * width] + width, &comm_buffer[node_atom[a] * width]);
  comm_rows = comm_buffer.data();
  comm_width = width;
  if (forward)
    comm->forward_comm(this);
  else
    comm->reverse_comm(this);
  comm_rows = nullptr;
  for (size_t a = 0; a < nnodes; a++) {
    if (!forward && node_atom[a] >= nlocal) {
      std::fill(&rows[a * width], &rows[a * width] + width, 0.0);    // given to the owner
      continue;
    }
    std::copy(&comm_buffer[node_atom[a] * width], &comm_buffer[node_atom[a] * width] + width,
              &rows[a * width]);
  }
}

// rows of LAMMPS' buffers, as doubles or, for the forward exchange of a
// float32 model, as float32, two per double: its atom features are float32
// values, copied exactly either way. The reverse exchange stays in double:
// ghost rows relayed over several ranks carry partial sums of adjoints,
// which float32 would round (2.6e-5 eV/A in the forces of float32 Si 512 on
// 2 ranks). Returns the doubles used.
static int put_rows(const double *rows, int width, int n, const int *list, int first, bool as_float,
                    double *buf)
{
  if (!as_float) {
    int m = 0;
    for (int i = 0; i < n; i++) {
      const double *row = rows + static_cast<size_t>(list ? list[i] : first + i) * width;
      for (int k = 0; k < width; k++) buf[m++] = row[k];
    }
    return m;
  }
  char *out = reinterpret_cast<char *>(buf);
  for (int i = 0; i < n; i++) {
    const double *row = rows + static_cast<size_t>(list ? list[i] : first + i) * width;
    for (int k = 0; k < width; k++, out += sizeof(float)) {
      const float v = static_cast<float>(row[k]);
      std::memcpy(out, &v, sizeof(float));
    }
  }
  return (n * width + 1) / 2;
}

// the inverse of put_rows: row := buffer, or row += buffer
static void get_rows(double *rows, int width, int n, const int *list, int first, bool as_float,
                     const double *buf, bool add)
{
  const char *in = reinterpret_cast<const char *>(buf);
  int m = 0;
  for (int i = 0; i < n; i++) {
    double *row = rows + static_cast<size_t>(list ? list[i] : first + i) * width;
    for (int k = 0; k < width; k++) {
      double v;
      if (as_float) {
        float f;
        std::memcpy(&f, in, sizeof(float));
        in += sizeof(float);
        v = f;
      } else {
        v = buf[m++];
      }
      row[k] = add ? row[k] + v : v;
    }
  }
}

int PairCHGNet::pack_forward_comm(int n, int *list, double *buf, int /*pbc_flag*/, int * /*pbc*/)
{
  return put_rows(comm_rows, comm_width, n, list, 0, comm_float, buf);
}

void PairCHGNet::unpack_forward_comm(int n, int first, double *buf)
{
  get_rows(comm_rows, comm_width, n, nullptr, first, comm_float, buf, false);
}

int PairCHGNet::pack_reverse_comm(int n, int first, double *buf)
{
  return put_rows(comm_rows, comm_width, n, nullptr, first, false, buf);
}

void PairCHGNet::unpack_reverse_comm(int n, int *list, double *buf)
{
  get_rows(comm_rows, comm_width, n, list, 0, false, buf, true);
}

/* ----------------------------------------------------------------------
   per-atom magnetic moments (muB) for fix pair: fix ID all pair N chgnet magmom 0
------------------------------------------------------------------------- */

void *PairCHGNet::extract_peratom(const char *str, int &ncol)
{
  if (strcmp(str, "magmom") == 0) {
    ncol = 0;
    return (void *) magmom;
  }
  return nullptr;
}

/* ---------------------------------------------------------------------- */

double PairCHGNet::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += (double) nmax_magmom * sizeof(double);
  bytes += (double) graph->edge_vectors.capacity() * sizeof(double) * 2;
  bytes += (double) graph->edge_shifts.capacity() * sizeof(int64_t);
  bytes += (double) graph->edge_index.capacity() * sizeof(int64_t);
  bytes += (double) (edge_i.capacity() + edge_j.capacity() + tag_node.capacity()) * sizeof(int);
  bytes += (double) (hop.capacity() + node_atom.capacity() + atom_node.capacity()) * sizeof(int);
  bytes += (double) (comm_buffer.capacity() + energy_weight.capacity()) * sizeof(double);
  return bytes;
}
