// Command manifestcheck decodes Kubernetes manifests into their Go API types with unknown and
// duplicate fields rejected, so a misspelt field fails instead of being dropped by the API
// server. Built-in kinds come from k8s.io/api, PrometheusRule from the Prometheus Operator's
// types, ScaledObject from KEDA's. A kind it does not know is an error too.
//
//	manifestcheck FILE...   (multi-document YAML; "-" reads stdin)
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

func scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme,
		appsv1.AddToScheme,
		policyv1.AddToScheme,
		autoscalingv2.AddToScheme,
		monitoringv1.AddToScheme,
		kedav1alpha1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: manifestcheck FILE... (- for stdin)")
		os.Exit(2)
	}
	s := scheme()
	strict := json.NewSerializerWithOptions(json.DefaultMetaFactory, s, s, json.SerializerOptions{Yaml: true, Strict: true})
	objects, failures := 0, 0
	for _, path := range os.Args[1:] {
		n, errs := checkFile(strict, path)
		objects += n
		for _, err := range errs {
			fmt.Printf("FAIL %v\n", err)
			failures++
		}
	}
	fmt.Printf("%d objects checked, %d failures\n", objects, failures)
	if failures > 0 || objects == 0 {
		os.Exit(1)
	}
}

func checkFile(strict runtime.Decoder, path string) (int, []error) {
	var in io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return 0, []error{err}
		}
		defer f.Close()
		in = f
	}
	docs := utilyaml.NewYAMLReader(bufio.NewReader(in))
	var errs []error
	n := 0
	for i := 0; ; i++ {
		doc, err := docs.Read()
		if errors.Is(err, io.EOF) {
			return n, errs
		}
		if err != nil {
			return n, append(errs, fmt.Errorf("%s: document %d: %w", path, i, err))
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		n++
		obj, gvk, err := strict.Decode(doc, nil, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: document %d (%s): %w", path, i, describe(gvk), err))
			continue
		}
		meta, ok := obj.(interface{ GetName() string })
		if !ok || meta.GetName() == "" {
			errs = append(errs, fmt.Errorf("%s: document %d (%s): no metadata.name", path, i, describe(gvk)))
			continue
		}
		fmt.Printf("ok   %s: %s %s\n", path, describe(gvk), meta.GetName())
	}
}

func describe(gvk *schema.GroupVersionKind) string {
	if gvk == nil {
		return "unknown kind"
	}
	return gvk.GroupVersion().String() + "/" + gvk.Kind
}

// stripComments drops comment-only lines, so a document of comments alone is skipped.
func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line)
		}
	}
	return bytes.Join(out, []byte("\n"))
}
