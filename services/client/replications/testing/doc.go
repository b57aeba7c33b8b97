// Package testing holds the fixture tests of the replications package.
package testing
