package main

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// command is one subcommand of peakdesk: its name, the one-line summary the
// top-level usage shows, and its argument synopsis.
type command struct {
	name, summary, synopsis string
}

// commands lists every subcommand, in the order the usage shows them. A
// test checks run dispatches each and that each answers -h with its help.
var commands = []command{
	{"dev", "run every role in one process with embedded NATS and the simulators (local use only)", "[flags]"},
	{"serve", "run the roles named by --roles against external Postgres, Redis and NATS (production)", "[flags]"},
	{"migrate", "apply the database migrations; migrate status lists them applied or pending", "[status] [flags]"},
	{"token", "print a signed bearer token", "--sub S [flags]"},
	{"shop", "shop administration: list, show, create, set, rotate-key, origins, encrypt-secrets, …", "<subcommand> [flags]"},
	{"faq", "import a shop's FAQ entries", "import --shop S [--replace] FILE"},
	{"operator", "add an operator of the console", "add --email E --role R [--shop S]"},
	{"mockllm", "serve the simulated OpenAI-compatible LLM provider (fault injection)", "[flags]"},
	{"mockshop", "serve the simulated shop API (fault injection)", "[flags]"},
	{"loadtest", "offer load to a peakdesk URL and report what happened", "[flags]"},
	{"drill", "orders: the order scenario with the shop API down mid-run; faults: the multi-process fault drill", "orders|faults [flags]"},
	{"bench", "measure the performance targets side by side with their baselines", "[flags]"},
	{"version", "print the version, commit, build date and Go version", "(no flags)"},
	{"help", "print this usage, or a command's help (help <command>)", "[command]"},
}

func lookupCommand(name string) (command, bool) {
	i := slices.IndexFunc(commands, func(c command) bool { return c.name == name })
	if i < 0 {
		return command{}, false
	}
	return commands[i], true
}

// topUsage is the top-level usage: every command with its summary.
func topUsage() string {
	var b strings.Builder
	b.WriteString("peakdesk keeps an AI customer-service desk answering through peak sales.\n\n")
	b.WriteString("Usage: peakdesk <command> [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-9s %s\n", c.name, c.summary)
	}
	b.WriteString("\nRun \"peakdesk help <command>\" or \"peakdesk <command> -h\" for a command's help.\n")
	return b.String()
}

// commandHeader is the first lines of a command's help.
func commandHeader(name string) string {
	c, _ := lookupCommand(name)
	return fmt.Sprintf("Usage: peakdesk %s %s\n\n%s.\n\n", name, c.synopsis, upperFirst(c.summary))
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// setUsage gives fs a help text: the command's header, its flags but the
// hidden ones, then extra.
func setUsage(fs *flag.FlagSet, name, extra string, hidden ...string) {
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprint(w, commandHeader(name))
		printFlags(w, fs, hidden...)
		if extra != "" {
			fmt.Fprint(w, "\n"+extra)
		}
	}
}

// printFlags prints fs's flags as flag.PrintDefaults does, leaving out the
// hidden ones (deprecated aliases, settings of the other mode).
func printFlags(w io.Writer, fs *flag.FlagSet, hidden ...string) {
	visible := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	fs.VisitAll(func(f *flag.Flag) {
		if slices.Contains(hidden, f.Name) {
			return
		}
		visible.Var(f.Value, f.Name, f.Usage)
		visible.Lookup(f.Name).DefValue = f.DefValue
	})
	fmt.Fprintln(w, "Flags:")
	visible.SetOutput(w)
	visible.PrintDefaults()
}

// envOnlyHelp names the settings that have no flag, so that no secret ever
// shows in a process list or a shell history. It never prints their values.
const envOnlyHelp = `Environment-only settings (secrets; no flag, so they never show in a process list):
  PEAKDESK_JWT_SECRET            platform signing key, at least 32 bytes%s
  PEAKDESK_JWT_PREVIOUS_SECRETS  earlier platform keys that still verify tokens (comma-separated)
  PEAKDESK_LLM_API_KEY           the LLM provider's API key
  PEAKDESK_MASTER_KEY            seals the shops' secrets at rest (32 bytes, hex or base64)%s
  PEAKDESK_MASTER_KEY_PREVIOUS   earlier master keys that still open what they sealed
  NATS_TLS_CERT, NATS_TLS_KEY    client certificate and key files for mutual TLS with NATS
Every other setting also reads an environment variable, named in its flag's help.
`

func envOnlyText(dev bool) string {
	if dev {
		return fmt.Sprintf(envOnlyHelp, "; unset in dev = a public dev secret", "; unset in dev = a public dev-only key")
	}
	return fmt.Sprintf(envOnlyHelp, " (required)", " (required once shops have secrets)")
}

// runHelp prints the top-level usage, or with a command name, that
// command's help (what "peakdesk <command> -h" prints) on stdout.
func runHelp(dispatch func(args []string, stdout, stderr io.Writer) error, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stdout, topUsage())
		return nil
	}
	name := args[0]
	if name == "help" {
		fmt.Fprint(stdout, topUsage())
		return nil
	}
	if _, ok := lookupCommand(name); !ok {
		return fmt.Errorf("help: unknown command %q (run \"peakdesk help\" for the list)", name)
	}
	// The command prints its help where it prints its flag errors; asked
	// for, it belongs on stdout.
	return dispatch([]string{name, "-h"}, stdout, stdout)
}

func isHelpArg(s string) bool { return s == "-h" || s == "-help" || s == "--help" || s == "help" }
