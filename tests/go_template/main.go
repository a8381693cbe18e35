// Command harness renders ollama TEMPLATEs with Go's own text/template, on data shaped the
// way ollama shapes it (template/template.go and api/types.go, ollama 2026-08, restated here:
// consecutive same-role messages merged, messages as *templateMessage, tools as
// templateTools whose String() is JSON, arguments and properties as Go maps, Think flags,
// missingkey=zero, and the json/currentDate/yesterdayDate/toTypeScriptType functions).
//
// Input (stdin): a JSON array of jobs {"template": "...", "request": {messages, tools, think}}
// ("request": null only parses). Output (stdout): a JSON array of {"text", "error"}.
// Used by tests/ollama_template.rs; needs only the Go standard library (Go >= 1.18).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"time"
)

// ---- request types (what ollama's API decodes) ----

type propType []string

func (p *propType) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*p = propType{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*p = many
	return nil
}

func (p propType) MarshalJSON() ([]byte, error) {
	if len(p) == 1 {
		return json.Marshal(p[0])
	}
	return json.Marshal([]string(p))
}

func (p propType) String() string {
	switch len(p) {
	case 0:
		return ""
	case 1:
		return p[0]
	}
	return fmt.Sprintf("%v", []string(p))
}

// orderedProps keeps JSON object keys in input order.
type orderedProps struct {
	keys []string
	vals map[string]property
}

func (o *orderedProps) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil { // {
		return err
	}
	o.vals = map[string]property{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key := tok.(string)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
		var p property
		if err := json.Unmarshal(raw[key], &p); err != nil {
			return err
		}
		if _, seen := o.vals[key]; !seen {
			o.keys = append(o.keys, key)
		}
		o.vals[key] = p
	}
	return nil
}

func (o orderedProps) MarshalJSON() ([]byte, error) {
	if o.vals == nil {
		return []byte("null"), nil
	}
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		vb, err := json.Marshal(o.vals[k])
		if err != nil {
			return nil, err
		}
		buf.Write(kb)
		buf.WriteByte(':')
		buf.Write(vb)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

type property struct {
	AnyOf       []property    `json:"anyOf,omitempty"`
	Type        propType      `json:"type,omitempty"`
	Items       any           `json:"items,omitempty"`
	Description string        `json:"description,omitempty"`
	Enum        []any         `json:"enum,omitempty"`
	Properties  *orderedProps `json:"properties,omitempty"`
	Required    []string      `json:"required,omitempty"`
}

type apiTool struct {
	Type     string `json:"type"`
	Items    any    `json:"items,omitempty"`
	Function struct {
		Name        string `json:"name"`
		Description string `json:"description,omitempty"`
		Parameters  struct {
			Type       string        `json:"type"`
			Defs       any           `json:"$defs,omitempty"`
			Items      any           `json:"items,omitempty"`
			Required   []string      `json:"required,omitempty"`
			Properties *orderedProps `json:"properties"`
		} `json:"parameters"`
	} `json:"function"`
}

type apiToolCall struct {
	ID       string `json:"id,omitempty"`
	Function struct {
		Index     int            `json:"index"`
		Name      string         `json:"name"`
		Arguments map[string]any `json:"arguments"`
	} `json:"function"`
}

type apiMessage struct {
	Role       string        `json:"role"`
	Content    string        `json:"content"`
	Thinking   string        `json:"thinking,omitempty"`
	Images     [][]byte      `json:"images,omitempty"`
	ToolCalls  []apiToolCall `json:"tool_calls,omitempty"`
	ToolName   string        `json:"tool_name,omitempty"`
	ToolCallID string        `json:"tool_call_id,omitempty"`
}

type request struct {
	Messages []apiMessage   `json:"messages"`
	Tools    []apiTool      `json:"tools"`
	Think    json.RawMessage `json:"think"`
}

// ---- what templates see ----

type templateArgs map[string]any

func (t templateArgs) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateProperties map[string]property

func (t templateProperties) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateToolCallFunction struct {
	Index     int
	Name      string
	Arguments templateArgs
}

type templateToolCall struct {
	ID       string
	Function templateToolCallFunction
}

type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     [][]byte
	ToolCalls  []templateToolCall
	ToolName   string
	ToolCallID string
}

type templateToolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties templateProperties `json:"properties"`
}

type templateToolFunction struct {
	Name        string                         `json:"name"`
	Description string                         `json:"description"`
	Parameters  templateToolFunctionParameters `json:"parameters"`
}

type templateTool struct {
	Type     string               `json:"type"`
	Items    any                  `json:"items,omitempty"`
	Function templateToolFunction `json:"function"`
}

func (t templateTool) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type templateTools []templateTool

func (t templateTools) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

func tsType(t string) string {
	switch t {
	case "string":
		return "string"
	case "number", "integer":
		return "number"
	case "boolean":
		return "boolean"
	case "array":
		return "any[]"
	case "object":
		return "Record<string, any>"
	case "null":
		return "null"
	}
	return "any"
}

func (p property) typeScript() string {
	if len(p.AnyOf) > 0 {
		var parts []string
		for _, a := range p.AnyOf {
			parts = append(parts, a.typeScript())
		}
		return strings.Join(parts, " | ")
	}
	if len(p.Type) == 0 {
		return "any"
	}
	var parts []string
	for _, t := range p.Type {
		parts = append(parts, tsType(t))
	}
	return strings.Join(parts, " | ")
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate":   func(args ...string) string { return time.Now().Format("2006-01-02") },
	"yesterdayDate": func(args ...string) string { return time.Now().AddDate(0, 0, -1).Format("2006-01-02") },
	"toTypeScriptType": func(v any) string {
		if p, ok := v.(property); ok {
			return p.typeScript()
		}
		return "any"
	},
}

func data(req request) map[string]any {
	var system []string
	var collated []*apiMessage
	for i := range req.Messages {
		m := &req.Messages[i]
		m.Role = strings.ToLower(m.Role)
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(collated); n > 0 && collated[n-1].Role == m.Role && m.Role != "tool" {
			collated[n-1].Content += "\n\n" + m.Content
		} else {
			collated = append(collated, m)
		}
	}
	var messages []*templateMessage
	for _, m := range collated {
		var calls []templateToolCall
		for _, tc := range m.ToolCalls {
			calls = append(calls, templateToolCall{
				ID: tc.ID,
				Function: templateToolCallFunction{
					Index: tc.Function.Index, Name: tc.Function.Name, Arguments: templateArgs(tc.Function.Arguments),
				},
			})
		}
		messages = append(messages, &templateMessage{
			Role: m.Role, Content: m.Content, Thinking: m.Thinking, Images: m.Images,
			ToolCalls: calls, ToolName: m.ToolName, ToolCallID: m.ToolCallID,
		})
	}
	var tools templateTools
	if req.Tools != nil {
		tools = make(templateTools, len(req.Tools))
		for i, t := range req.Tools {
			p := t.Function.Parameters
			var props templateProperties
			if p.Properties != nil {
				props = templateProperties(p.Properties.vals)
			}
			tools[i] = templateTool{Type: t.Type, Items: t.Items, Function: templateToolFunction{
				Name: t.Function.Name, Description: t.Function.Description,
				Parameters: templateToolFunctionParameters{
					Type: p.Type, Defs: p.Defs, Items: p.Items, Required: p.Required, Properties: props,
				},
			}}
		}
	}
	think, level, isSet := false, "", false
	if len(req.Think) > 0 && string(req.Think) != "null" {
		isSet = true
		var b bool
		if err := json.Unmarshal(req.Think, &b); err == nil {
			think = b
		} else if err := json.Unmarshal(req.Think, &level); err == nil {
			think = true
		}
	}
	return map[string]any{
		"System": strings.Join(system, "\n\n"), "Messages": messages, "Tools": tools, "Response": "",
		"Think": think, "ThinkLevel": level, "IsThinkSet": isSet,
	}
}

type job struct {
	Template string          `json:"template"`
	Request  json.RawMessage `json:"request"`
}

type result struct {
	Text  string `json:"text"`
	Error string `json:"error"`
}

func run(j job) result {
	t, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(j.Template)
	if err != nil {
		return result{Error: err.Error()}
	}
	if len(j.Request) == 0 || string(j.Request) == "null" {
		return result{}
	}
	var req request
	if err := json.Unmarshal(j.Request, &req); err != nil {
		return result{Error: "request: " + err.Error()}
	}
	var out bytes.Buffer
	if err := t.Execute(&out, data(req)); err != nil {
		return result{Text: out.String(), Error: err.Error()}
	}
	return result{Text: out.String()}
}

func main() {
	var jobs []job
	if err := json.NewDecoder(os.Stdin).Decode(&jobs); err != nil {
		fmt.Fprintln(os.Stderr, "reading jobs:", err)
		os.Exit(2)
	}
	results := make([]result, len(jobs))
	for i, j := range jobs {
		results[i] = run(j)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(results); err != nil {
		fmt.Fprintln(os.Stderr, "writing results:", err)
		os.Exit(2)
	}
}
