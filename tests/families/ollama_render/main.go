// Renders chat requests the way Ollama's server does, for tests/families/test_ollama.py: the Modelfile's
// SYSTEM is put first when a request has no system message (server/routes.go), consecutive messages of
// one role are joined and the system messages collected into .System (template.collate), and the
// TEMPLATE runs on {System, Messages, Tools, Response} with Go's text/template.
// Input (stdin): {"template": "...", "system": "...", "requests": [[{"role": "...", "content": "..."}]]}.
// Output (stdout): a JSON list of the rendered prompts.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Input struct {
	Template string      `json:"template"`
	System   string      `json:"system"`
	Requests [][]Message `json:"requests"`
}

func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			m := msgs[i]
			collated = append(collated, &m)
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("").Parse(in.Template))
	out := []string{}
	for _, req := range in.Requests {
		msgs := req
		if len(req) > 0 && req[0].Role != "system" && in.System != "" {
			msgs = append([]Message{{Role: "system", Content: in.System}}, req...)
		}
		system, collated := collate(msgs)
		var b strings.Builder
		err := tmpl.Execute(&b, map[string]any{"System": system, "Messages": collated, "Tools": nil, "Response": ""})
		if err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
