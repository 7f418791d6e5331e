package main

import "syscall"

// childProcAttr makes a child of the fault drill die with it, so that a
// drill stopped hard leaves no role process or Redis behind.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
