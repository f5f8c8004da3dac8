/* pair_style chgnet: CHGNet (TorchScript export of crossfunctional) as a
   LAMMPS pair style, loaded as a plugin.

     pair_style chgnet model.pt [threads N] [device cpu|cuda[:k]]
     pair_coeff * * Si O NULL ...

   Serial (one MPI rank): ghost atoms are folded onto their owners by atom
   ID, so the graph nodes are the local atoms and every edge carries the
   integer image shift of its neighbour, exactly the model contract of
   DESIGN.md. */

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

 protected:
  void allocate();
  void check_environment(const char *where);
  void build_graph();

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
