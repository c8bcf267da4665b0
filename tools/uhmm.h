/* SPDX-License-Identifier: MIT */
#ifndef UHMM_TOOL_H
#define UHMM_TOOL_H

int cmd_info(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_trace(int argc, char **argv);
int cmd_residency(int argc, char **argv);

#endif
