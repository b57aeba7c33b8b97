// Package testing holds the fixture tests of the replicationgroups package.
package testing
