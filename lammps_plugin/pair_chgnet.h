/* pair_style chgnet: CHGNet (TorchScript export of crossfunctional) as a
   LAMMPS pair style, loaded as a plugin.

     pair_style chgnet model.pt [threads N] [device cpu|cuda[:k]]
                                [parallel auto|serial|gather|exchange|shell]
     pair_coeff * * Si O NULL ...

   serial (default on one MPI rank): ghost atoms are folded onto their
   owners by atom ID, so the graph nodes are the local atoms and every edge
   carries the integer image shift of its neighbour, exactly the model
   contract of docs/design.md.

   exchange (many ranks, large systems): the graph is unfolded (nodes = local +
   ghost atoms, shifts zero); the model runs segment by segment and the
   atom features of ghost atoms are refreshed from their owners after each
   of the first n_conv - 1 atom convolutions (forward comm), their adjoints
   returned in the backward pass (reverse comm). Ghost cutoff n_conv x 3 A
   (short-bond halo) + skin.

   gather (many ranks, small systems): the ranks send their local atoms
   (ID, element, position) and the pairs within the model cutoff that start
   at them to rank 0, which builds the serial graph of the whole system
   (periodic images as integer shifts), evaluates it once and sends forces,
   site energies, magmoms and per-atom virials back to the owners. The
   other ranks wait (sleeping) meanwhile. Ghost cutoff: the model cutoff +
   skin, as serial.

   auto: serial on one rank; on more, gather or exchange from the atom
   count per rank and the size of the exchange halo (choose_mode).

   shell: the unfolded graph with no feature exchange, every layer on every
   local and ghost atom; ghost cutoff n_conv x 6 A (the receptive field) +
   skin. Exact but slow: an independent reference for exchange. */

#ifndef LMP_PAIR_CHGNET_H
#define LMP_PAIR_CHGNET_H

#include "pair.h"

#include <memory>
#include <string>
#include <vector>

namespace crossfunctional {
class TorchModel;
struct GraphInput;
struct GraphOutput;
}    // namespace crossfunctional

namespace LAMMPS_NS {

class PairCHGNet : public Pair {
 public:
  PairCHGNet(class LAMMPS *);
  ~PairCHGNet() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void *extract_peratom(const char *, int &) override;
  double memory_usage() override;

  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

  // forward / reverse exchange of per-atom rows (see chgnet_model.h)
  void exchange_rows(std::vector<double> &rows, int width, bool forward);

 protected:
  void allocate();
  void check_environment(const char *where);
  void build_graph();
  void build_unfolded_graph();
  void compute_unfolded();
  void compute_gathered();
  int choose_mode();
  int node_threads();
  double ghost_cutoff_needed() const;
  void check_masses();

  enum { AUTO, SERIAL, EXCHANGE, SHELL, GATHER, NMODES };
  int parallel_keyword;    // what pair_style asked for
  enum { MASS_ERROR, MASS_WARN, MASS_IGNORE };
  int mass_check;          // check_masses yes|warn|no
  int mode;                // what this run does (AUTO resolved in init_style)
  double cutghost_set;     // the comm cutoff this style set (0 = none)
  double gather_wait;      // gather: seconds the last wait for rank 0 took
  int gather_threads;      // torch threads rank 0 evaluates with (gather: the node's)
  bool root_node;          // this rank shares a node with rank 0
  bool report_graph;       // log the graph sizes at the next compute
  double *comm_rows;       // rows being exchanged (one per local + ghost atom)
  int comm_width;
  bool comm_float;         // forward exchange in float32 (float32 model)
  std::vector<double> energy_weight;    // 1 for local atoms of a chgnet type, else 0
  std::vector<int> hop;    // exchange: short-bond hops from the nearest local atom
  std::vector<int> node_atom;    // unfolded graph node -> local or ghost atom index
  std::vector<int> atom_node;    // local or ghost atom index -> node (-1: none)
  std::vector<double> comm_buffer;    // one row per local + ghost atom in an exchange

  std::unique_ptr<crossfunctional::TorchModel> model;
  std::unique_ptr<crossfunctional::GraphInput> graph;
  std::unique_ptr<crossfunctional::GraphOutput> result;
  std::string model_file, model_name;
  std::vector<std::string> elements;    // model's element symbols, Z = index + 1
  std::vector<int> type_z;              // per LAMMPS type: atomic number, 0 = NULL
  double cutoff;
  int nthreads;

  std::vector<int> node_local;    // graph node -> local atom index
  std::vector<int> tag_node;      // atom ID -> graph node (-1 if not a node)
  std::vector<int> edge_i, edge_j;    // local atom index of each edge's ends

  double *magmom;    // per-atom magnetic moments (muB), for fix pair
  int nmax_magmom;
};

}    // namespace LAMMPS_NS

#endif
